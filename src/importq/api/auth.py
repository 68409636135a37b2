"""Authentication: ``Authorization: Bearer <token>`` on every /api/v1 route, or the web
pages' session cookie (:mod:`importq.api.sessions`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection

from importq.accounts import TokenRefused, User, user_for_token, user_for_token_id
from importq.api.sessions import CSRF_HEADER, SAFE_METHODS, csrf_matches, session_of
from importq.errors import Refusal
from importq.operations import logs
from importq.services import Services

CONNECTION_WAIT_SECONDS = 10.0


def services(request: Request) -> Services:
    """The process's services; while its database is known to be away, a 503 at once
    rather than a wait for a connection that cannot come."""
    found: Services = request.app.state.services
    if found.outage.ongoing:
        raise database_unavailable()
    return found


def database_unavailable() -> Refusal:
    return Refusal(503, "database_unavailable", "The database is unavailable; try again shortly.")


ServicesDep = Annotated[Services, Depends(services)]


# Declares the scheme in the OpenAPI document, and parses the header for every caller.
_BEARER = HTTPBearer(
    scheme_name="apiToken",
    auto_error=False,
    description="An API token: `Authorization: Bearer <token>`",
)


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return (credentials.credentials.strip() if credentials else "") or None


async def bearer_token(request: Request) -> str | None:
    """The token of the request's ``Authorization: Bearer <token>`` header, if it holds
    one, read as the routes behind the token read it (for routes open to anyone)."""
    return _token(await _BEARER(request))


def require_role(user: User, role: str, detail: str) -> None:
    """Refuse (``403 forbidden``, saying ``detail``) a user without ``role``."""
    if not user.has_role(role):
        raise Refusal(403, "forbidden", detail)


async def current_user(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
) -> User:
    """The caller: by their bearer token, else by the web pages' session cookie (an
    unsafe method then needs the session's CSRF token in ``X-CSRF-Token``)."""
    token = _token(credentials)
    if token is None:
        found = await session_user(request, services, header=request.headers.get(CSRF_HEADER))
    else:
        found = await admitted_user(services, lambda conn: user_for_token(conn, token))
    logs.user.set(found.name)  # for the request's log lines
    return found


async def admitted_user(
    services: Services,
    find: Callable[[AsyncConnection[Any]], Awaitable[User | None]],
    ended: str | None = None,
) -> User:
    """The user ``find`` looks up by a token, if that token lets them in; else ``401``,
    worded ``ended`` when given (a web session's), else by the token's refusal.

    The lookup runs on a pool of its own: uploads and jobs never hold its connections.
    A request waits this long at most for one; past it, 503.
    """
    async with services.auth_pool.connection(timeout=CONNECTION_WAIT_SECONDS) as conn:
        try:
            user = await find(conn)
        except TokenRefused as refused:
            raise Refusal(401, refused.code, ended or str(refused)) from None
    if user is None:
        raise Refusal(401, "invalid_token", ended or "The API token is not valid.")
    return user


async def session_user(request: Request, services: Services, *, header: str | None) -> User:
    """The user of the request's web session. ``header`` is the CSRF token the request
    carries, checked unless the method is safe (a form's token comes from its field)."""
    found = session_of(request, services.settings)
    if found is None:
        raise Refusal(
            401, "unauthenticated", "Send an API token as 'Authorization: Bearer <token>'."
        )
    session, cookie = found
    if request.method not in SAFE_METHODS and not csrf_matches(services.settings, cookie, header):
        raise Refusal(403, "csrf", "The request lacks the page's CSRF token; reload the page.")
    return await admitted_user(
        services,
        lambda conn: user_for_token_id(conn, session.token_id),
        "Your session has ended; sign in again.",
    )


CurrentUser = Annotated[User, Depends(current_user)]
