"""The gateway's FastAPI application, built around adapters handed in by the composition root."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from gateway import admin, api, catalogue, pages
from gateway.accounts import Accounts
from gateway.csrf import require_csrf
from gateway.deps import Gateway
from gateway.reference import ReferenceData
from gateway.settings import GatewaySettings
from kit.health import health_routes
from kit.ports import Documents, EventBus, ObjectStore

__all__ = ["create_app"]


def create_app(
    *,
    settings: GatewaySettings,
    bus: EventBus,
    store: ObjectStore,
    docs: Documents,
    is_ready: Callable[[], bool] = lambda: True,
) -> FastAPI:
    app = FastAPI(title="imaging-uploader", version="0.1.0")
    app.state.gateway = Gateway(
        settings=settings,
        bus=bus,
        store=store,
        docs=docs,
        accounts=Accounts(docs=docs),
        reference=ReferenceData(docs=docs),
    )
    app.add_middleware(
        SessionMiddleware,
        # Never a known default: anyone knowing the key could sign a cookie as an admin. The
        # composition root passes a persistent one; without it, sessions last one process.
        secret_key=settings.session_secret or secrets.token_urlsafe(32),
        session_cookie="uploader_session",
        max_age=settings.session_hours * 3600,  # shared ward computers: a working day
        same_site="lax",
        https_only=settings.session_https_only,
    )
    # Cookie-authenticated state changes need the session's CSRF token (see csrf.py).
    app.include_router(api.router, dependencies=[Depends(require_csrf)])
    app.include_router(catalogue.router, dependencies=[Depends(require_csrf)])
    app.include_router(admin.api_router)
    app.include_router(pages.router)
    app.include_router(admin.page_router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    for route in health_routes(is_ready):
        app.router.routes.append(route)
    return app
