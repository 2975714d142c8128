"""Server-side sessions: the cookie holds a random session id; this collection says whose
it is and until when. Ending a session deletes it, so a copied cookie is worth nothing after
sign-out, a password change, deactivation or an administrator's "sign out everywhere"."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from contracts.envelope import utcnow
from kit.ports import Documents, Index, Range

__all__ = ["INDEXES", "SESSIONS", "Session", "Sessions"]

SESSIONS = "sessions"
INDEXES: Mapping[str, Sequence[Index]] = {
    SESSIONS: (Index(fields=(("username", 1),)), Index(fields=(("expires_at", 1),))),
}
# Last-seen times are written at most this often (not on every request).
_TOUCH_SECONDS = 60.0


class Session(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    session_id: str
    username: str
    created_at: str
    expires_at: float
    last_seen_at: float
    ip: str | None = None
    user_agent: str | None = None


class Sessions:
    def __init__(self, *, docs: Documents, lifetime_seconds: float) -> None:
        self._collection = docs.collection(SESSIONS)
        self._lifetime = lifetime_seconds

    async def start(self, username: str, *, ip: str | None, user_agent: str | None) -> str:
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(
            session_id=session_id,
            username=username,
            created_at=utcnow().isoformat(),
            expires_at=now + self._lifetime,
            last_seen_at=now,
            ip=ip,
            user_agent=(user_agent or "")[:300] or None,
        )
        await self._collection.insert({"_id": session_id, **session.model_dump()})
        return session_id

    async def username(self, session_id: str) -> str | None:
        """Whose live session this is, or None (unknown, ended or expired)."""
        doc = await self._collection.get(session_id)
        if doc is None:
            return None
        session = Session.model_validate(doc)
        now = time.time()
        if session.expires_at <= now:
            await self._collection.delete(session_id)
            return None
        if now - session.last_seen_at > _TOUCH_SECONDS:
            await self._collection.update(session_id, set={"last_seen_at": now})
        return session.username

    async def end(self, session_id: str) -> None:
        await self._collection.delete(session_id)

    async def end_all(self, username: str, *, except_session: str | None = None) -> int:
        """Sign the user out everywhere (but, if given, in this one session)."""
        ended = 0
        for doc in await self._collection.find({"username": username}):
            if doc["_id"] != except_session and await self._collection.delete(doc["_id"]):
                ended += 1
        return ended

    async def of(self, username: str) -> list[Session]:
        docs = await self._collection.find({"username": username}, sort=[("last_seen_at", -1)])
        return [Session.model_validate(doc) for doc in docs]

    async def expire(self) -> int:
        return await self._collection.delete_many({"expires_at": Range(lt=time.time())})
