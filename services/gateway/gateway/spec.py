"""The gateway, declared: the web pages and REST API in front of everything else."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from gateway.accounts import INDEXES as ACCOUNT_INDEXES
from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.audit import INDEXES as AUDIT_INDEXES
from gateway.events import routes
from gateway.intake import INDEXES as INTAKE_INDEXES
from gateway.jobs import INDEXES as JOB_INDEXES
from gateway.maintenance import maintain
from gateway.reference import seed_reference_data
from gateway.sessions import INDEXES as SESSION_INDEXES
from gateway.settings import GatewaySettings
from ingest.upload_history import INDEXES as HISTORY_INDEXES
from kit.ports import Documents
from kit.service import Platform, ServiceSpec

__all__ = ["NAME", "SPEC", "ensure_first_admin", "session_secret"]

NAME = "gateway"


def session_secret(settings: GatewaySettings) -> str:
    """The configured secret, else one made on first start and kept in the data folder (so
    sign-ins survive restarts of a one-machine site)."""
    if settings.session_secret:
        return settings.session_secret
    path = settings.data_dir / "session-secret"
    if not path.exists():
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


async def ensure_first_admin(docs: Documents, announce: Callable[[str], None]) -> None:
    accounts = Accounts(docs=docs)
    if await accounts.count() > 0:
        return
    password = secrets.token_urlsafe(12)
    await accounts.create_user(username="admin", role="admin", password=password)
    announce(
        "\n"
        "  First start: an administrator account was created.\n"
        "    username: admin\n"
        f"    password: {password}\n"
        "  It is shown only this once; sign in and keep it somewhere safe.\n"
    )


async def _prepare(platform: Platform) -> None:
    await seed_reference_data(platform.docs)


def _app(platform: Platform, is_ready: Callable[[], bool]) -> FastAPI:
    settings: Any = platform.settings
    if not isinstance(settings, GatewaySettings):
        settings = GatewaySettings.model_validate(settings.model_dump())
    settings = settings.model_copy(update={"session_secret": session_secret(settings)})
    return create_app(
        settings=settings,
        bus=platform.bus,
        store=platform.store,
        docs=platform.docs,
        is_ready=is_ready,
    )


SPEC = ServiceSpec(
    name=NAME,
    routes=routes,
    needs=frozenset({"bus", "store", "docs"}),
    indexes={
        **JOB_INDEXES,
        **INTAKE_INDEXES,
        **ACCOUNT_INDEXES,
        **SESSION_INDEXES,
        **AUDIT_INDEXES,
        **HISTORY_INDEXES,  # the gateway writes it, through ingest's repository
    },
    prepare=_prepare,
    maintain=maintain,
    http_app=_app,
)
