"""Web sessions: the signed cookie the pages sign in with, and their CSRF tokens.

Invariants:

- A session names an API token by its id. It lets its user in exactly while that token
  does (not revoked, not expired, the user not disabled), and for at most
  :data:`SESSION_SECONDS` from sign-in. Signing in with a token names that token.
  Signing in with a name and a password issues a token of :data:`SESSION_SECONDS` for the
  session alone (``minted``), which signing out revokes.
- The cookie is ``<payload>.<signature>``: the payload is base64url JSON, the signature
  HMAC-SHA256 of it with a key of its own (purpose ``web sessions``). It is ``HttpOnly``,
  ``SameSite=Lax``, ``Secure`` when the public URL is https.
- Every form, and every unsafe API call that comes with the cookie rather than a bearer
  token, carries a CSRF token: HMAC (purpose ``csrf``) of the cookie's value. Without the
  right one the request is refused (``403 csrf``). Before sign-in, the sign-in form's token
  is the HMAC of a random cookie of its own (:data:`LOGIN_COOKIE`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from importq.config import Settings, purpose_key

COOKIE = "importq_session"
LOGIN_COOKIE = "importq_sign_in"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
CLOCK_SKEW_SECONDS = 60
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    token_id: uuid.UUID
    signed_in_at: int
    #: The token was issued for this session (a password sign-in): signing out revokes it.
    minted: bool


def _sign(settings: Settings, purpose: str, text: str) -> str:
    key = purpose_key(settings.master_key, purpose)
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()


def seal(settings: Settings, session: Session) -> str:
    """The cookie value of ``session``."""
    payload = json.dumps(
        {"t": str(session.token_id), "at": session.signed_in_at, "m": session.minted},
        separators=(",", ":"),
    )
    encoded = base64.urlsafe_b64encode(payload.encode()).decode("ascii").rstrip("=")
    return f"{encoded}.{_sign(settings, 'web sessions', encoded)}"


def unseal(settings: Settings, value: str) -> Session | None:
    """The session of a cookie value, None when it is forged, malformed or too old."""
    encoded, _, signature = value.partition(".")
    if not encoded.isascii() or not signature.isascii():
        return None
    if not hmac.compare_digest(signature, _sign(settings, "web sessions", encoded)):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        session = Session(uuid.UUID(payload["t"]), int(payload["at"]), bool(payload["m"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    # A minute of grace: another process's clock may be a little ahead of this one's.
    if not -CLOCK_SKEW_SECONDS <= time.time() - session.signed_in_at < SESSION_SECONDS:
        return None
    return session


def csrf_token(settings: Settings, cookie_value: str) -> str:
    """The CSRF token that goes with a cookie's value."""
    return _sign(settings, "csrf", cookie_value)


def csrf_matches(settings: Settings, cookie_value: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(
        given.encode(), csrf_token(settings, cookie_value).encode()
    )


def session_of(request: Request, settings: Settings) -> tuple[Session, str] | None:
    """The request's session and its cookie value, if it has a valid one."""
    value = request.cookies.get(COOKIE)
    session = unseal(settings, value) if value else None
    return None if session is None or value is None else (session, value)


def login_form_token(request: Request, settings: Settings) -> tuple[str, str]:
    """The sign-in form's CSRF token and the cookie value it goes with (kept, or new)."""
    value = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    return csrf_token(settings, value), value


def _secure(settings: Settings) -> bool:
    return (settings.public_url or "").startswith("https://")


def set_cookie(response: Response, settings: Settings, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="lax",
        secure=_secure(settings),
        path="/",
    )


def clear_cookie(response: Response, settings: Settings, name: str) -> None:
    response.delete_cookie(name, httponly=True, samesite="lax", secure=_secure(settings), path="/")
