"""Users, roles, lab-unit access, passwords (argon2) and API tokens (stored hashed)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict

from contracts.envelope import utcnow
from kit.ports import Documents, DuplicateKey, Index

__all__ = [
    "INDEXES",
    "ROLES",
    "Accounts",
    "ApiToken",
    "Role",
    "User",
    "UserExists",
]

Role = Literal["uploader", "data_manager", "admin"]
ROLES: tuple[Role, ...] = ("uploader", "data_manager", "admin")
USERS, TOKENS = "users", "api_tokens"
INDEXES = {TOKENS: (Index(fields=(("token_id", 1),)), Index(fields=(("username", 1),)))}
# A token's last use is written at most this often (not on every request it makes).
_TOKEN_TOUCH_SECONDS = 60.0

_hasher = PasswordHasher()


class UserExists(ValueError):
    pass


class User(BaseModel):
    model_config = ConfigDict(frozen=True)

    username: str
    role: Role
    lab_unit_ids: tuple[str, ...] = ()
    file_upload_count: int = 0
    upload_quota: int | None = None  # None: the site default (MAX_FILES_PER_UPLOAD)
    active: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use_lab_unit(self, lab_unit_id: str) -> bool:
        return self.is_admin or lab_unit_id in self.lab_unit_ids

    def quota(self, default: int) -> int:
        return default if self.upload_quota is None else self.upload_quota


class ApiToken(BaseModel):
    """What is known of a token; the token itself is shown once, when it is created."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    token_id: str
    username: str
    label: str = ""
    created_at: str
    last_used_at: str | None = None
    expires_at: str | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and datetime.fromisoformat(self.expires_at) <= (
            now or datetime.now(UTC)
        )


def _user(doc: dict[str, Any]) -> User:
    return User.model_validate({k: v for k, v in doc.items() if k in User.model_fields})


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, *, docs: Documents) -> None:
        self._users = docs.collection(USERS)
        self._tokens = docs.collection(TOKENS)

    async def create_user(
        self,
        *,
        username: str,
        role: Role,
        password: str,
        lab_unit_ids: tuple[str, ...] = (),
        upload_quota: int | None = None,
    ) -> User:
        username = username.strip().lower()
        if not username:
            raise ValueError("a username is required")
        doc = {
            "_id": username,
            "username": username,
            "role": role,
            "lab_unit_ids": list(lab_unit_ids),
            "file_upload_count": 0,
            "upload_quota": upload_quota,
            "active": True,
            "password_hash": _hasher.hash(password),
            "created_at": utcnow().isoformat(),
        }
        try:
            await self._users.insert(doc)
        except DuplicateKey:
            raise UserExists(f"user {username!r} already exists") from None
        return _user(doc)

    async def get(self, username: str) -> User | None:
        doc = await self._users.get(username.strip().lower())
        return _user(doc) if doc else None

    async def all(self) -> list[User]:
        return [_user(d) for d in await self._users.find(sort=[("username", 1)])]

    async def count(self) -> int:
        return await self._users.count()

    async def update(self, username: str, **fields: Any) -> User | None:
        if "lab_unit_ids" in fields:
            fields["lab_unit_ids"] = list(fields["lab_unit_ids"])
        if "password" in fields:
            fields["password_hash"] = _hasher.hash(fields.pop("password"))
        doc = await self._users.update(username, set=fields)
        return _user(doc) if doc else None

    async def authenticate(self, username: str, password: str) -> User | None:
        doc = await self._users.get(username.strip().lower())
        # Unknown users are checked against a dummy hash so the answer takes as long either
        # way; argon2 runs in a thread so sign-ins don't stall uploads streaming meanwhile.
        stored = doc["password_hash"] if doc else _dummy_hash()
        if not await asyncio.to_thread(_verify, stored, password):
            return None
        if not doc or not doc.get("active", True):
            return None
        return _user(doc)

    async def create_token(
        self, username: str, *, label: str = "", expires_in_days: int | None = None
    ) -> tuple[str, ApiToken]:
        """A new API token and what is kept of it; only its hash is stored, so this is the one
        time the token is seen."""
        user = await self.get(username)
        if user is None:
            raise LookupError(f"no user {username!r}")
        token = "iu_" + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        info = ApiToken(
            token_id="tok_" + secrets.token_hex(6),
            username=user.username,
            label=label.strip()[:100],
            created_at=now.isoformat(),
            expires_at=(now + timedelta(days=expires_in_days)).isoformat()
            if expires_in_days
            else None,
        )
        await self._tokens.insert({"_id": _token_id(token), **info.model_dump()})
        return token, info

    async def tokens(self, username: str | None = None) -> list[ApiToken]:
        """A user's tokens (everyone's with None), newest first."""
        where = {} if username is None else {"username": username.strip().lower()}
        tokens = []
        for doc in await self._tokens.find(where, sort=[("created_at", -1)]):
            if "token_id" not in doc:  # made before tokens had ids: give it one now
                doc = (
                    await self._tokens.update(
                        doc["_id"], set={"token_id": "tok_" + secrets.token_hex(6)}
                    )
                    or doc
                )
            tokens.append(ApiToken.model_validate(doc))
        return tokens

    async def token(self, token_id: str) -> ApiToken | None:
        found = await self._tokens.find({"token_id": token_id}, limit=1)
        return ApiToken.model_validate(found[0]) if found else None

    async def revoke_token(self, token_id: str) -> bool:
        found = await self._tokens.find({"token_id": token_id}, limit=1)
        return bool(found) and await self._tokens.delete(found[0]["_id"])

    async def user_for_token(self, token: str) -> User | None:
        doc = await self._tokens.get(_token_id(token))
        if not doc:
            return None
        if "token_id" in doc:
            info = ApiToken.model_validate(doc)
            if info.expired():
                return None
            last = doc.get("last_used_epoch") or 0
            if time.time() - float(last) > _TOKEN_TOUCH_SECONDS:
                await self._tokens.update(
                    doc["_id"],
                    set={"last_used_at": utcnow().isoformat(), "last_used_epoch": time.time()},
                )
        user = await self.get(doc["username"])
        return user if user and user.active else None

    async def reserve_upload(self, username: str, *, quota: int) -> bool:
        """Count one more accepted file against the user's lifetime quota, atomically."""
        doc = await self._users.update(username, inc={"file_upload_count": 1})
        if doc is None:
            return False
        if doc["file_upload_count"] > quota:
            await self._users.update(username, inc={"file_upload_count": -1})
            return False
        return True

    async def release_upload(self, username: str, *, count: int = 1) -> None:
        """Give back `count` slots taken by `reserve_upload` (a refused or failed file)."""
        await self._users.update(username, inc={"file_upload_count": -count})
