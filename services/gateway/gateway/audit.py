"""The audit log: who did what, when, from where. Sign-ins (and failed ones), sign-outs,
tokens created and revoked, accounts changed. Never a password or a token; append only."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.envelope import utcnow
from kit.ports import Documents, Index

__all__ = ["AUDIT_LOG", "INDEXES", "AuditEntry", "AuditLog"]

AUDIT_LOG = "audit_log"
INDEXES: Mapping[str, Sequence[Index]] = {
    AUDIT_LOG: (Index(fields=(("at", -1),)), Index(fields=(("actor", 1), ("at", -1)))),
}


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    at: str
    action: str
    actor: str | None = None  # who did it (None: not signed in)
    subject: str | None = None  # whom or what it concerned
    ip: str | None = None
    user_agent: str | None = None
    detail: dict[str, Any] = {}


class AuditLog:
    def __init__(self, *, docs: Documents) -> None:
        self._collection = docs.collection(AUDIT_LOG)

    async def record(
        self,
        action: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        **detail: Any,
    ) -> None:
        entry = AuditEntry(
            at=utcnow().isoformat(),
            action=action,
            actor=actor,
            subject=subject,
            ip=ip,
            user_agent=(user_agent or "")[:300] or None,
            detail=detail,
        )
        await self._collection.insert({"_id": uuid.uuid4().hex, **entry.model_dump()})

    async def recent(
        self, *, actor: str | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        where: dict[str, Any] = {}
        if actor is not None:
            where["actor"] = actor
        if action is not None:
            where["action"] = action
        found = await self._collection.find(where, sort=[("at", -1)], limit=limit)
        return [AuditEntry.model_validate(doc) for doc in found]
