"""Authentication: ``Authorization: Bearer <token>`` on every /api/v1 route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from importq.accounts import TokenRefused, User, user_for_token
from importq.errors import Refusal
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


async def current_user(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
) -> User:
    token = _token(credentials)
    if token is None:
        raise Refusal(
            401, "unauthenticated", "Send an API token as 'Authorization: Bearer <token>'."
        )
    # A pool of its own: uploads and jobs never hold its connections. A request waits
    # this long at most for one; past it, 503.
    async with services.auth_pool.connection(timeout=CONNECTION_WAIT_SECONDS) as conn:
        try:
            user = await user_for_token(conn, token)
        except TokenRefused as refused:
            raise Refusal(401, refused.code, str(refused)) from None
    if user is None:
        raise Refusal(401, "invalid_token", "The API token is not valid.")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
