"""Brute-force protection for sign-in: failures are counted per account and per client
address; past a threshold the account (or the address) is locked for a time that doubles with
every further failure. A locked sign-in is answered 429 before any password is checked.

An attacker can lock someone else's account this way for a while; that is the accepted price
(the lock is temporary and short at first), and the audit log shows who tried.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from gateway.errors import GatewayError
from kit.ports import Documents

__all__ = ["SIGN_IN_FAILURES", "SignInThrottle", "TooManySignIns", "too_many_sign_ins"]

SIGN_IN_FAILURES = "sign_in_failures"


def too_many_sign_ins(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"Too many failed sign-ins. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


class TooManySignIns(GatewayError):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            too_many_sign_ins(seconds),
            status_code=429,
            headers={"Retry-After": str(max(1, math.ceil(seconds)))},
        )


@dataclass(frozen=True, kw_only=True)
class Policy:
    failures: int  # allowed before the first lock
    first_lock_seconds: float
    max_lock_seconds: float
    # Failures further apart than this start counting again.
    window_seconds: float = 3600.0


ACCOUNT = Policy(failures=5, first_lock_seconds=60, max_lock_seconds=30 * 60)
# One address may be a whole hospital behind a NAT: more room before it locks.
CLIENT = Policy(failures=20, first_lock_seconds=60, max_lock_seconds=30 * 60)


class SignInThrottle:
    def __init__(self, *, docs: Documents) -> None:
        self._collection = docs.collection(SIGN_IN_FAILURES)

    @staticmethod
    def _keys(username: str, client: str | None) -> list[tuple[str, Policy]]:
        keys = [(f"account:{username.strip().lower()}", ACCOUNT)]
        if client:
            keys.append((f"client:{client}", CLIENT))
        return keys

    async def check(self, username: str, client: str | None) -> None:
        """Raises `TooManySignIns` while the account or the address is locked."""
        now = time.time()
        for key, _ in self._keys(username, client):
            doc = await self._collection.get(key)
            locked_until = float((doc or {}).get("locked_until") or 0)
            if locked_until > now:
                raise TooManySignIns(locked_until - now)

    async def failed(self, username: str, client: str | None) -> None:
        now = time.time()
        for key, policy in self._keys(username, client):
            doc = await self._collection.get(key)
            if doc is not None and now - float(doc.get("last_at") or 0) > policy.window_seconds:
                await self._collection.delete(key)
            doc = await self._collection.update(
                key, inc={"count": 1}, set={"last_at": now}, upsert=True
            )
            count = int((doc or {}).get("count") or 0)
            if count >= policy.failures:
                lock = min(
                    policy.first_lock_seconds * 2 ** (count - policy.failures),
                    policy.max_lock_seconds,
                )
                await self._collection.update(key, set={"locked_until": now + lock})

    async def succeeded(self, username: str) -> None:
        # The address keeps its count: one right password must not unlock guessing others.
        await self._collection.delete(self._keys(username, None)[0][0])
