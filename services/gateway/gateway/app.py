"""The gateway's FastAPI application, built around adapters handed in by the composition root.

Around the routes, from the outside in: security headers (and `Secure` cookies on https), an
idle deadline on request bodies, the signed session cookie, CSRF. Domain errors become
answers in one place (`_answer`): JSON for the API and the pages' scripts, a styled page for
a browser.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import (
    account,
    admin,
    api,
    catalogue,
    dashboard,
    encounters,
    image_edits,
    pages,
    pregraded,
    upload_changes,
)
from gateway.accounts import Accounts
from gateway.audit import AuditLog
from gateway.csrf import CsrfMiddleware, require_csrf
from gateway.deps import Gateway
from gateway.errors import NO_STORAGE_SPACE, STORAGE_UNAVAILABLE, GatewayError
from gateway.favicon import favicon_ico
from gateway.reference import ReferenceData
from gateway.sessions import Sessions
from gateway.settings import GatewaySettings
from gateway.throttle import SignInThrottle
from kit.health import health_routes
from kit.ports import Documents, EventBus, ObjectStore, StorageFull, Unavailable

__all__ = ["BodyStalled", "create_app"]

# Pages load only this site's scripts and styles; style attributes (progress bars) are fine.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
BODY_STALLED = "The upload stalled: no data arrived for {seconds} seconds. Please try again."
PAGE_NOT_FOUND = "There is no page at this address. Please check the link."


class _SecurityHeaders:
    """Headers every answer gets, and `Secure` on cookies whenever the site is served over
    https (or the setting says it always is)."""

    def __init__(self, app: ASGIApp, *, always_secure: bool) -> None:
        self.app = app
        self.always_secure = always_secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = self.always_secure or scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                names = {k.lower() for k, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]  # job tokens are in URLs
                if any(
                    k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers
                ):
                    extra.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                headers += [(k, v) for k, v in extra if k not in names]
                if secure:
                    headers = [
                        (k, v + b"; Secure")
                        if k.lower() == b"set-cookie" and b"secure" not in v.lower()
                        else (k, v)
                        for k, v in headers
                    ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyStalled(GatewayError):
    def __init__(self, seconds: float) -> None:
        super().__init__(BODY_STALLED.format(seconds=f"{seconds:g}"), status_code=408)


class _BodyDeadline:
    """A request body that stops arriving for `seconds` ends the request (408): a client
    trickling bytes cannot hold an upload open forever."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def receive_within() -> Message:
            try:
                async with asyncio.timeout(self.seconds):
                    return await receive()
            except TimeoutError:
                raise BodyStalled(self.seconds) from None

        await self.app(scope, receive_within, send)


def _wants_page(request: Request) -> bool:
    """A browser navigating (not the API, not the pages' scripts): answer with a page."""
    if request.url.path.startswith("/api/") or "x-csrf-token" in request.headers:
        return False
    accept = request.headers.get("accept", "")
    return "text/html" in accept


def _answer(
    request: Request,
    status_code: int,
    message: str,
    *,
    title: str = "Sorry",
    headers: Mapping[str, str] | None = None,
) -> Response:
    if _wants_page(request):
        return pages.render_error(
            request,
            user=None,
            title=title,
            message=message,
            status_code=status_code,
            headers=headers,
        )
    return JSONResponse({"detail": message}, status_code, headers=headers)


def _install_error_answers(app: FastAPI) -> None:
    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return _answer(request, exc.status_code, exc.message, headers=exc.headers)

    async def storage_full(request: Request, exc: Exception) -> Response:
        return _answer(request, 507, NO_STORAGE_SPACE)

    async def unavailable(request: Request, exc: Exception) -> Response:
        return _answer(request, 503, STORAGE_UNAVAILABLE, headers={"Retry-After": "10"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404 and _wants_page(request):
            return _answer(request, 404, PAGE_NOT_FOUND, title="Page not found")
        detail = exc.detail if isinstance(exc.detail, str) else "Request refused"
        if _wants_page(request) and exc.status_code in (404, 405):
            return _answer(request, exc.status_code, detail, headers=exc.headers)
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _jsonable(exc.errors())}, 422)

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(StorageFull, storage_full)
    app.add_exception_handler(Unavailable, unavailable)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)


def _jsonable(errors: Any) -> Any:
    """Validation errors as JSON (their `ctx` may hold exceptions or huge numbers)."""
    out = []
    for error in errors:
        item = {k: v for k, v in error.items() if k in ("type", "loc", "msg")}
        out.append(item)
    return out


def _install_docs(app: FastAPI) -> None:
    """/docs without the internet: Swagger UI's files (5.x, which reads OpenAPI 3.1) are
    served from this site, from the copy the fastapi-offline package carries."""
    assets = Path(fastapi_offline.__file__).resolve().parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    async def docs_page() -> HTMLResponse:
        return HTMLResponse(pages.DOCS_HTML)

    async def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route("/docs", docs_page, include_in_schema=False)
    app.add_api_route("/docs/oauth2-redirect", docs_redirect, include_in_schema=False)


def create_app(
    *,
    settings: GatewaySettings,
    bus: EventBus,
    store: ObjectStore,
    docs: Documents,
    is_ready: Callable[[], bool] = lambda: True,
) -> FastAPI:
    app = FastAPI(
        title="imaging-uploader",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(require_csrf)],
    )
    app.state.gateway = Gateway(
        settings=settings,
        bus=bus,
        store=store,
        docs=docs,
        accounts=Accounts(docs=docs),
        reference=ReferenceData(docs=docs),
        sessions=Sessions(docs=docs, lifetime_seconds=settings.session_hours * 3600),
        audit=AuditLog(docs=docs),
        throttle=SignInThrottle(docs=docs),
    )
    # Innermost first: CSRF needs the session the session middleware reads.
    app.add_middleware(CsrfMiddleware)
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
    app.add_middleware(_BodyDeadline, seconds=settings.http_body_timeout_seconds)
    app.add_middleware(_SecurityHeaders, always_secure=settings.session_https_only)
    _install_error_answers(app)
    app.include_router(api.router)
    app.include_router(account.api_router)
    app.include_router(catalogue.router)
    app.include_router(encounters.router)
    app.include_router(dashboard.router)
    app.include_router(upload_changes.router)
    app.include_router(image_edits.router)
    app.include_router(pregraded.router)
    app.include_router(admin.api_router)
    app.include_router(pages.router)
    app.include_router(account.page_router)
    app.include_router(admin.page_router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    _install_docs(app)

    async def favicon() -> Response:
        return Response(
            favicon_ico(),
            media_type="image/x-icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    app.add_api_route("/favicon.ico", favicon, include_in_schema=False)
    for route in health_routes(is_ready):
        app.router.routes.append(route)
    return app
