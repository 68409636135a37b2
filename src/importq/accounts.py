"""Users and API tokens.

Every function takes a connection and runs in the caller's transaction. The caller
commits.

User names are unique: :func:`create_user` raises :class:`UserExists` for a taken name.
Only a token's SHA-256 digest is stored, so the plain token is shown once, when it is
issued. A token is 32 random bytes, URL-safe encoded.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from importq.rules.datasets import ROLES
from importq.sql import queries


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    email: str | None
    locale: str | None

    def has_role(self, lowest: str) -> bool:
        """Whether this user's role is ``lowest`` or above (user < moderator < admin)."""
        return ROLES.index(self.role) >= ROLES.index(lowest)

    @property
    def sees_all_batches(self) -> bool:
        return self.has_role("moderator")


class UserExists(ValueError):
    """A user with that name exists already."""


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def issue_token(conn: AsyncConnection[Any], user_id: int) -> str:
    token = secrets.token_urlsafe(32)
    await conn.execute(
        queries["insert_token"], {"token_hash": token_digest(token), "user_id": user_id}
    )
    return token


async def create_user(
    conn: AsyncConnection[Any],
    name: str,
    *,
    role: str = "user",
    email: str | None = None,
    locale: str | None = None,
) -> tuple[int, str]:
    """Create a user and its first token. Raises UserExists for a taken name."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    cursor = await conn.execute(queries["find_user_id"], {"name": name})
    if await cursor.fetchone() is not None:
        raise UserExists(f"user {name!r} exists already")
    cursor = await conn.execute(
        queries["insert_user"], {"name": name, "role": role, "email": email, "locale": locale}
    )
    row = await cursor.fetchone()
    assert row is not None
    user_id = int(row[0])
    return user_id, await issue_token(conn, user_id)


async def token_for_existing(conn: AsyncConnection[Any], name: str) -> str | None:
    """Issue another token for user ``name``; None when there is no such user."""
    cursor = await conn.execute(queries["find_user_id"], {"name": name})
    row = await cursor.fetchone()
    return None if row is None else await issue_token(conn, int(row[0]))


async def user_for_token(conn: AsyncConnection[Any], token: str) -> User | None:
    cursor = await conn.execute(queries["user_by_token"], {"token_hash": token_digest(token)})
    row = await cursor.fetchone()
    return None if row is None else User(*row)


async def admin_exists(conn: AsyncConnection[Any]) -> bool:
    cursor = await conn.execute(queries["any_admin"])
    row = await cursor.fetchone()
    return bool(row and row[0])
