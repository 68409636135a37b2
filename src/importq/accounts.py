"""Users and API tokens.

Every function takes a connection and runs in the caller's transaction. The caller
commits.

User names are unique: :func:`create_user` raises :class:`UserExists` for a taken name.
Only a token's SHA-256 digest is stored, so the plain token is shown once, when it is
issued. A token is 32 random bytes, URL-safe encoded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from importq.rules.datasets import ROLES
from importq.sql import queries


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    email: str | None
    locale: str | None
    #: The token this user came in with, when they came in with one.
    token_id: uuid.UUID | None = None

    def has_role(self, lowest: str) -> bool:
        """Whether this user's role is ``lowest`` or above (user < moderator < admin)."""
        return ROLES.index(self.role) >= ROLES.index(lowest)

    @property
    def sees_all_batches(self) -> bool:
        return self.has_role("moderator")


class UserExists(ValueError):
    """A user with that name exists already."""


class BadUserName(ValueError):
    """A name a user cannot have."""


# A user's name is a handle: it appears in paths (/users/{name}/tokens) and in lists read
# by people. ASCII letters, digits and . _ @ + -, starting with a letter or digit, so that
# no two names look alike or hide characters, and none is a path's "." or "..". Spelled
# without class shorthands, for JSON Schema (the OpenAPI document) reads it too.
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$"
MAX_USER_NAME = 100


def check_user_name(name: str) -> None:
    if len(name) > MAX_USER_NAME or not re.fullmatch(USER_NAME_PATTERN, name):
        raise BadUserName(
            f"{name!r} cannot be a user's name: use 1 to {MAX_USER_NAME} ASCII letters, "
            "digits and . _ @ + -, starting with a letter or a digit"
        )


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# The longest a token may be given to live: ten years.
MAX_EXPIRES_IN = 10 * 365 * 24 * 3600


@dataclass(frozen=True)
class IssuedToken:
    """A token as it is issued: its secret, shown this once, and the id that names it."""

    id: uuid.UUID
    secret: str


async def issue_token(
    conn: AsyncConnection[Any],
    user_id: int,
    *,
    name: str | None = None,
    expires_in: float | None = None,
    for_session: bool = False,
) -> IssuedToken:
    """A new token for the user, expiring ``expires_in`` seconds from now if given.
    ``for_session``: a password sign-in's, revoked when the password changes."""
    token = secrets.token_urlsafe(32)
    cursor = await conn.execute(
        queries["insert_token"],
        {
            "token_hash": token_digest(token),
            "user_id": user_id,
            "name": name,
            "expires_in": expires_in,
            "for_session": for_session,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    return IssuedToken(row[0], token)


async def create_user(
    conn: AsyncConnection[Any],
    name: str,
    *,
    role: str = "user",
    email: str | None = None,
    locale: str | None = None,
) -> tuple[int, IssuedToken]:
    """Create a user and its first token. Raises UserExists for a taken name, and
    BadUserName for one that breaks :data:`USER_NAME_PATTERN`."""
    check_user_name(name)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if await find_user_id(conn, name) is not None:
        raise UserExists(f"user {name!r} exists already")
    cursor = await conn.execute(
        queries["insert_user"], {"name": name, "role": role, "email": email, "locale": locale}
    )
    row = await cursor.fetchone()
    assert row is not None
    user_id = int(row[0])
    return user_id, await issue_token(conn, user_id)


async def token_for_existing(
    conn: AsyncConnection[Any],
    name: str,
    *,
    label: str | None = None,
    expires_in: float | None = None,
) -> IssuedToken | None:
    """Issue another token for user ``name``; None when there is no such user."""
    user_id = await find_user_id(conn, name)
    if user_id is None:
        return None
    return await issue_token(conn, user_id, name=label, expires_in=expires_in)


async def find_user_id(conn: AsyncConnection[Any], name: str) -> int | None:
    cursor = await conn.execute(queries["find_user_id"], {"name": name})
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


class TokenRefused(Exception):
    """A token that exists but no longer lets anyone in; ``code`` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


async def user_for_token(conn: AsyncConnection[Any], token: str) -> User | None:
    """The user of a token that lets them in, None for an unknown token.

    Raises :class:`TokenRefused` for a revoked or expired token, or a disabled user's.
    Notes the token's use (at most once a minute), in the caller's transaction.
    """
    cursor = await conn.execute(queries["user_by_token"], {"token_hash": token_digest(token)})
    return await _admitted(conn, await cursor.fetchone())


async def user_for_token_id(conn: AsyncConnection[Any], token_id: uuid.UUID) -> User | None:
    """:func:`user_for_token`, for the token with this id (a web session's)."""
    cursor = await conn.execute(queries["user_by_token_id"], {"token_id": token_id})
    return await _admitted(conn, await cursor.fetchone())


async def _admitted(conn: AsyncConnection[Any], row: tuple[Any, ...] | None) -> User | None:
    if row is None:
        return None
    user_id, name, role, email, locale, token_id, revoked, expired, disabled = row
    if revoked:
        raise TokenRefused("token_revoked", "This API token was revoked.")
    if expired:
        raise TokenRefused("token_expired", "This API token has expired.")
    if disabled:
        raise TokenRefused("user_disabled", "The user of this API token is disabled.")
    await conn.execute(queries["token_used"], {"id": token_id})
    return User(user_id, name, role, email, locale, token_id=token_id)


async def revoke_token(
    conn: AsyncConnection[Any], token_id: uuid.UUID, *, owner_id: int | None
) -> bool:
    """Revoke a token; with ``owner_id``, only one of that user's. Whether it was found."""
    cursor = await conn.execute(queries["revoke_token"], {"id": token_id, "user_id": owner_id})
    return await cursor.fetchone() is not None


async def disable_user(conn: AsyncConnection[Any], name: str) -> bool:
    """Disable a user, so that none of their tokens works. Whether the user exists."""
    cursor = await conn.execute(queries["disable_user"], {"name": name})
    return await cursor.fetchone() is not None


async def list_tokens(conn: AsyncConnection[Any], name: str) -> list[dict[str, Any]]:
    """User ``name``'s tokens, newest first, without their secrets."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["list_tokens"], {"name": name})
        return list(await cursor.fetchall())


async def list_users(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["list_users"], {"user_id": None})
        return list(await cursor.fetchall())


async def user_row(conn: AsyncConnection[Any], user_id: int) -> dict[str, Any] | None:
    """One user, as :func:`list_users` gives each."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["list_users"], {"user_id": user_id})
        return await cursor.fetchone()


async def admin_exists(conn: AsyncConnection[Any]) -> bool:
    cursor = await conn.execute(queries["any_admin"])
    row = await cursor.fetchone()
    return bool(row and row[0])


# scrypt's cost: 16 MiB and ~50 ms a check on one core (RFC 7914's interactive setting).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


class BadPassword(ValueError):
    """A password a user cannot have."""


def hash_password(password: str) -> str:
    """``scrypt$<n>$<r>$<p>$<salt>$<hash>``, with a fresh 16-byte salt."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise BadPassword(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    parts = [str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    return "$".join(["scrypt", *parts])


def password_matches(stored: str | None, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made of. With nothing stored, a
    check of the same cost still runs, so that the time tells no one which names exist."""
    if stored is None:
        _scrypt(password, b"\0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return False
    kind, n, r, p, salt, digest = stored.split("$")
    assert kind == "scrypt"
    found = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(found, base64.b64decode(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    data = password.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def set_password(conn: AsyncConnection[Any], name: str, password: str | None) -> bool:
    """Set user ``name``'s password (None removes it), and revoke the tokens of the web
    sessions a password opened. Whether the user exists. Raises :class:`BadPassword` for
    a password too short or too long."""
    stored = None if password is None else hash_password(password)
    cursor = await conn.execute(queries["set_password"], {"name": name, "password_hash": stored})
    return await cursor.fetchone() is not None


async def user_id_for_password(conn: AsyncConnection[Any], name: str, password: str) -> int | None:
    """The id of user ``name`` when ``password`` is theirs, else None. Raises
    :class:`TokenRefused` (``user_disabled``) for a disabled user with the right password.

    The hash is checked in a worker thread: ~50 ms of CPU, kept off the event loop.
    """
    cursor = await conn.execute(queries["user_password"], {"name": name})
    row = await cursor.fetchone()
    stored = None if row is None else row[1]
    if not await asyncio.to_thread(password_matches, stored, password) or row is None:
        return None
    if row[2]:
        raise TokenRefused("user_disabled", "This user is disabled.")
    return int(row[0])
