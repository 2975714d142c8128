"""What request handlers get injected: the process's adapters and the signed-in user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status

from gateway.access import Access
from gateway.accounts import Accounts, User
from gateway.audit import AuditLog
from gateway.reference import ReferenceData
from gateway.sessions import Sessions
from gateway.settings import GatewaySettings
from gateway.throttle import SignInThrottle
from kit.ports import Documents, EventBus, ObjectStore

__all__ = [
    "SESSION_ID",
    "AccessDep",
    "AdminUser",
    "CurrentUser",
    "Gateway",
    "GatewayDep",
    "OptionalUser",
    "client_address",
    "session_id",
]

# The only thing about the signed-in user the (signed) cookie holds: the server-side
# session's id (see gateway.sessions).
SESSION_ID = "sid"


@dataclass(frozen=True, kw_only=True)
class Gateway:
    settings: GatewaySettings
    bus: EventBus
    store: ObjectStore
    docs: Documents
    accounts: Accounts
    reference: ReferenceData
    sessions: Sessions
    audit: AuditLog
    throttle: SignInThrottle

    async def audit_request(self, request: Request, action: str, **fields: Any) -> None:
        """Record `action` in the audit log, with the address and browser it came from."""
        await self.audit.record(
            action,
            ip=client_address(request),
            user_agent=request.headers.get("user-agent"),
            **fields,
        )


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


def session_id(request: Request) -> str | None:
    """The id of this browser's server-side session, if it has one."""
    session = request.scope.get("session")
    value = session.get(SESSION_ID) if session else None
    return value if isinstance(value, str) else None


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _optional_user(request: Request, gateway: GatewayDep) -> User | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return await gateway.accounts.user_for_token(header[7:].strip())
    current = session_id(request)
    if current is None:
        return None
    username = await gateway.sessions.username(current)
    if username is None:  # ended (signed out elsewhere, password changed) or expired
        request.scope["session"].pop(SESSION_ID, None)
        return None
    user = await gateway.accounts.get(username)
    return user if user and user.active else None


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


async def _access(user: CurrentUser) -> Access:
    return Access(user)


AccessDep = Annotated[Access, Depends(_access)]
