"""Users and their tokens over HTTP.

Only admins manage users: list them, create one, issue a token for anyone. Every user
lists and revokes their own tokens; an admin revokes anyone's. A token's secret is
shown once, in the answer that issues it; lists never hold one. A revoked token, an
expired one or a disabled user's gets ``401`` on its very next request.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Response
from psycopg import errors as pg_errors
from pydantic import BaseModel, ConfigDict, Field

from importq import accounts
from importq.accounts import User
from importq.api.auth import CurrentUser, ServicesDep, require_role
from importq.api.schemas import PRINTABLE, errors
from importq.errors import Refusal

router = APIRouter()

Role = Literal["user", "moderator", "admin"]  # ROLES, lowest first


class UserInfo(BaseModel):
    id: int
    name: str
    role: Role
    email: str | None
    locale: str | None
    createdAt: datetime
    disabledAt: datetime | None


class NewUser(BaseModel):
    # Strict: a JSON value is taken only as the type the document gives (no true for 1).
    model_config = ConfigDict(strict=True)

    name: str = Field(
        min_length=1, max_length=accounts.MAX_USER_NAME, pattern=accounts.USER_NAME_PATTERN
    )
    role: Role = "user"
    email: str | None = Field(
        default=None, max_length=320, pattern=r"^[^\u0000-\u0020\u007f@]+@[^\u0000-\u0020\u007f@]+$"
    )
    locale: str | None = Field(
        default=None,
        max_length=35,
        pattern=r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$",
        description="A language tag such as fr or pt-BR; emails use the nearest one importq has",
    )


class TokenInfo(BaseModel):
    id: uuid.UUID
    name: str | None
    createdAt: datetime
    lastUsedAt: datetime | None
    expiresAt: datetime | None
    revokedAt: datetime | None


class NewToken(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str | None = Field(default=None, max_length=100, pattern=PRINTABLE)
    expiresIn: float | None = Field(
        default=None,
        gt=0,
        le=accounts.MAX_EXPIRES_IN,
        allow_inf_nan=False,
        description="Seconds, from now",
    )


class IssuedToken(BaseModel):
    id: uuid.UUID
    token: str = Field(description="The secret: shown this once")


SHARED_WEBHOOK_SECRET = (
    "Webhooks of this service are all signed with one key, which its operator gives to "
    "receivers (importq webhook-secret)."
)


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="The key of X-Importq-Signature on the webhooks of your batches"
    )


class CreatedUser(BaseModel):
    user: UserInfo
    token: IssuedToken


def _admin(user: User) -> None:
    require_role(user, "admin", "Only admins manage users.")


@router.get("/api/v1/users", response_model=list[UserInfo], responses=errors(403))
async def list_users(user: CurrentUser, services: ServicesDep) -> list[UserInfo]:
    _admin(user)
    async with services.pool.connection() as conn:
        rows = await accounts.list_users(conn)
    return [_user_info(r) for r in rows]


def _user_info(row: dict[str, Any]) -> UserInfo:
    return UserInfo(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        email=row["email"],
        locale=row["locale"],
        createdAt=row["created_at"],
        disabledAt=row["disabled_at"],
    )


@router.post(
    "/api/v1/users", status_code=201, response_model=CreatedUser, responses=errors(403, 409)
)
async def create_user(user: CurrentUser, services: ServicesDep, new: NewUser) -> CreatedUser:
    _admin(user)
    try:
        async with services.pool.connection() as conn:
            user_id, issued = await accounts.create_user(
                conn, new.name, role=new.role, email=new.email, locale=new.locale
            )
            created = await accounts.user_row(conn, user_id)
    except (accounts.UserExists, pg_errors.UniqueViolation):
        raise Refusal(409, "user_exists", f"A user named {new.name!r} exists already.") from None
    assert created is not None
    return CreatedUser(
        user=_user_info(created), token=IssuedToken(id=issued.id, token=issued.secret)
    )


@router.post(
    "/api/v1/users/{name}/tokens",
    status_code=201,
    response_model=IssuedToken,
    responses=errors(403, 404),
)
async def issue_token(
    # Any name a user has: some were given before names had a rule.
    name: Annotated[str, Path(max_length=accounts.MAX_USER_NAME, pattern=PRINTABLE)],
    user: CurrentUser,
    services: ServicesDep,
    new: Annotated[NewToken | None, Body()] = None,
) -> IssuedToken:
    _admin(user)
    asked = new or NewToken()
    async with services.pool.connection() as conn:
        issued = await accounts.token_for_existing(
            conn, name, label=asked.name, expires_in=asked.expiresIn
        )
    if issued is None:
        raise Refusal(404, "unknown_user", f"There is no user named {name!r}.")
    return IssuedToken(id=issued.id, token=issued.secret)


@router.get("/api/v1/tokens", response_model=list[TokenInfo])
async def list_own_tokens(user: CurrentUser, services: ServicesDep) -> list[TokenInfo]:
    async with services.pool.connection() as conn:
        rows = await accounts.list_tokens(conn, user.name)
    return [
        TokenInfo(
            id=r["id"],
            name=r["name"],
            createdAt=r["created_at"],
            lastUsedAt=r["last_used_at"],
            expiresAt=r["expires_at"],
            revokedAt=r["revoked_at"],
        )
        for r in rows
    ]


@router.delete("/api/v1/tokens/{token_id}", status_code=204, responses=errors(404))
async def revoke_token(token_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> Response:
    """Revoke one of the caller's tokens (an admin: anyone's). Revoking twice is fine."""
    owner = None if user.has_role("admin") else user.id
    async with services.pool.connection() as conn:
        found = await accounts.revoke_token(conn, token_id, owner_id=owner)
    if not found:
        raise Refusal(404, "unknown_token", "There is no such token of yours.")
    return Response(status_code=204)


@router.get("/api/v1/webhook-secret", response_model=WebhookSecret, responses=errors(409))
async def own_webhook_secret(user: CurrentUser, services: ServicesDep) -> WebhookSecret:
    """The key the webhooks of the caller's batches are signed with, when each user has
    their own (``IMPORTQ_WEBHOOK_KEYS=per-user``); a shared key is the operator's to hand
    out, not every user's to read."""
    if services.settings.webhook_keys == "shared":
        raise Refusal(409, "shared_webhook_secret", SHARED_WEBHOOK_SECRET)
    return WebhookSecret(secret=services.settings.webhook_key_of(user.id).decode())
