"""Authentication: ``Authorization: Bearer <token>`` on every /api/v1 route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from importq.accounts import User, user_for_token
from importq.errors import Refusal
from importq.services import Services


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


async def current_user(
    services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> User:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refusal(
            401, "unauthenticated", "Send an API token as 'Authorization: Bearer <token>'."
        )
    async with services.pool.connection() as conn:
        user = await user_for_token(conn, token.strip())
    if user is None:
        raise Refusal(401, "invalid_token", "The API token is not valid.")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
