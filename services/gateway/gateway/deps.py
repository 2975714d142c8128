"""What request handlers get injected: the process's adapters and the signed-in user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from gateway.accounts import Accounts, User
from gateway.reference import ReferenceData
from gateway.settings import GatewaySettings
from kit.ports import Documents, EventBus, ObjectStore

__all__ = ["SESSION_USER", "AdminUser", "CurrentUser", "Gateway", "GatewayDep", "OptionalUser"]

SESSION_USER = "username"


@dataclass(frozen=True)
class Gateway:
    settings: GatewaySettings
    bus: EventBus
    store: ObjectStore
    docs: Documents
    accounts: Accounts
    reference: ReferenceData


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def _optional_user(request: Request, gateway: GatewayDep) -> User | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return await gateway.accounts.user_for_token(header[7:].strip())
    session = request.scope.get("session")
    if session and (username := session.get(SESSION_USER)):
        user = await gateway.accounts.get(username)
        return user if user and user.active else None
    return None


OptionalUser = Annotated[User | None, Depends(_optional_user)]


async def _current_user(user: OptionalUser) -> User:
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Please sign in",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[User, Depends(_current_user)]


async def _admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Administrators only")
    return user


AdminUser = Annotated[User, Depends(_admin)]
