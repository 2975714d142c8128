"""The web pages: sign-in, direct upload, processing, results and recent jobs.

Server-rendered HTML (Jinja2) with a little vanilla JavaScript; every page works from what the
server renders, the scripts only add live updates, drag-and-drop and in-page error messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from gateway.access import Access
from gateway.accounts import User
from gateway.api import job_pages, run_upload
from gateway.csrf import CSRF_FIELD, CSRF_HEADER, csrf_token, new_csrf_token
from gateway.deps import (
    SESSION_ID,
    Gateway,
    GatewayDep,
    OptionalUser,
    client_address,
    session_id,
)
from gateway.errors import GatewayError
from gateway.forms import small_form
from gateway.jobs import find_job_view, recent_jobs
from gateway.throttle import TooManySignIns
from gateway.uploads import UploadRules, direct_rules, upload_messages, zip_rules

__all__ = [
    "DOCS_HTML",
    "STATIC_DIR",
    "flash",
    "login_redirect",
    "render",
    "render_error",
    "router",
    "wants_json",
]

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
HOME = "/direct/upload"
WRONG_PASSWORD = "Incorrect username or password."
SIGNED_OUT = "You have signed out."
SESSION_ENDED = "Your session has ended. Please sign in again."
_FLASH_KEY = "flash"

STATUS_LABELS = {
    "queued": "Queued",
    "processing": "Processing",
    "done": "Completed",
    "completed": "Completed",
    "error": "Error",
}
ROLE_LABELS = {"uploader": "Uploader", "data_manager": "Data manager", "admin": "Administrator"}

router = APIRouter(include_in_schema=False)


# --- rendering ------------------------------------------------------------------------------


@cache
def _static_version(name: str, mtime_ns: int) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    """`/static/NAME?v=HASH`: a new release's CSS and scripts are never served from a stale
    browser cache."""
    path = STATIC_DIR / name
    try:
        version = _static_version(name, path.stat().st_mtime_ns)
    except OSError:
        version = "0"
    return f"/static/{name}?v={version}"


def _when(value: str | None) -> Markup:
    """A timestamp as `<time>`: UTC from the server, turned into local time by app.js."""
    if not value:
        return Markup('<span class="muted">—</span>')
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return Markup(escape(value))
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}">{}</time>').format(value, text)


def _epoch_when(value: float | None) -> Markup:
    if value is None:
        return _when(None)
    return _when(datetime.fromtimestamp(value, UTC).isoformat())


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.0f} KB"
    return f"{value / (1024 * 1024):.1f} MB"


def _status_label(status: str | None) -> str:
    return STATUS_LABELS.get(status or "", (status or "unknown").capitalize())


@cache
def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    env = templates.env
    env.globals.update(static_url=static_url, ROLE_LABELS=ROLE_LABELS, CSRF_FIELD=CSRF_FIELD)
    env.filters.update(
        when=_when, epoch_when=_epoch_when, filesize=_size, status_label=_status_label
    )
    env.trim_blocks = env.lstrip_blocks = True
    return templates


def flash(request: Request, text: str, *, kind: str = "success") -> None:
    """A message shown once, on the next page this browser renders."""
    session = request.scope.setdefault("session", {})
    session[_FLASH_KEY] = [*session.get(_FLASH_KEY, []), {"kind": kind, "text": text}]


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    *,
    user: User | None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    session = request.scope.setdefault("session", {})
    flashes = session.pop(_FLASH_KEY, [])
    response: HTMLResponse = _templates().TemplateResponse(
        request,
        name,
        {"user": user, "csrf_token": csrf_token(request), "flashes": flashes, **(context or {})},
        status_code=status_code,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )
    return response


def render_error(
    request: Request,
    *,
    user: User | None,
    title: str,
    message: str,
    status_code: int,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"title": title, "message": message},
        user=user,
        status_code=status_code,
        headers=headers,
    )


DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>imaging-uploader API</title>
  <link rel="icon" href="/favicon.ico">
  <link rel="stylesheet" href="/docs-assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs-assets/swagger-ui-bundle.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status.HTTP_303_SEE_OTHER)


def wants_json(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a crafted link must not send people elsewhere after sign-in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return HOME
    return target


# --- sign-in --------------------------------------------------------------------------------


@router.get("/")
async def home(user: OptionalUser) -> RedirectResponse:
    return RedirectResponse(HOME if user else "/login", status.HTTP_303_SEE_OTHER)


@router.get("/login", response_model=None)
async def login_page(request: Request, user: OptionalUser, next: str | None = None) -> Response:
    if user is not None:
        return RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)
    return render(request, "login.html", {"next": _safe_next(next), "username": ""}, user=None)


@router.post("/login")
async def login(request: Request, gateway: GatewayDep) -> Response:
    form = await small_form(request)
    username = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    target = _safe_next(str(form.get("next") or ""))
    context = {"next": target, "username": username}
    client = client_address(request)
    user_agent = request.headers.get("user-agent")
    if not username or not password:
        return render(
            request,
            "login.html",
            {**context, "error": "Please enter your username and password."},
            user=None,
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    try:
        await gateway.throttle.check(username, client)
    except TooManySignIns as locked:
        await gateway.audit_request(
            request, "sign_in_refused", subject=username.lower(), reason="locked"
        )
        return render(
            request,
            "login.html",
            {**context, "error": locked.message},
            user=None,
            status_code=locked.status_code,
            headers=locked.headers,
        )
    user = await gateway.accounts.authenticate(username, password)
    if user is None:
        await gateway.throttle.failed(username, client)
        await gateway.audit_request(request, "sign_in_failed", subject=username.lower())
        return render(
            request,
            "login.html",
            {**context, "error": WRONG_PASSWORD},
            user=None,
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    await gateway.throttle.succeeded(username)
    request.session.clear()  # nothing from before sign-in carries over (session fixation)
    request.session[SESSION_ID] = await gateway.sessions.start(
        user.username, ip=client, user_agent=user_agent
    )
    new_csrf_token(request)
    await gateway.audit_request(request, "signed_in", actor=user.username)
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


@router.post("/logout")
async def logout(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    if (current := session_id(request)) is not None:
        await gateway.sessions.end(current)  # a copy of the cookie is worth nothing now
    if user is not None:
        await gateway.audit_request(
            request,
            "signed_out",
            actor=user.username,
        )
    request.session.clear()
    new_csrf_token(request)
    flash(request, SIGNED_OUT)
    return RedirectResponse("/login", status.HTTP_303_SEE_OTHER)


@router.get("/session/csrf", response_model=None)
async def session_csrf(request: Request, user: OptionalUser) -> JSONResponse:
    """The session's current CSRF token, for a page that has been open a long time (the user
    may have signed in again in another tab since). Other sites cannot read the answer."""
    if user is None:
        return JSONResponse(
            {"detail": SESSION_ENDED},
            status.HTTP_401_UNAUTHORIZED,
            headers={"Cache-Control": "no-store"},
        )
    return JSONResponse({"csrf_token": csrf_token(request)}, headers={"Cache-Control": "no-store"})


# --- direct upload and ZIP upload ----------------------------------------------------------


async def _upload_form_context(gateway: Gateway, user: User, rules: UploadRules) -> dict[str, Any]:
    reference = await gateway.reference.all()
    lab_units = [u for u in reference["lab_units"] if user.may_use_lab_unit(u["id"])]
    usable_hospitals = {u["hospital_id"] for u in lab_units}
    hospitals = [h for h in reference["hospitals"] if user.is_admin or h["id"] in usable_hospitals]
    quota = user.quota(gateway.settings.max_files_per_upload)
    return {
        "messages": upload_messages(rules),
        "fields": rules.fields,
        "hospitals": hospitals,
        "lab_units": lab_units,
        "cameras": reference["cameras"],
        "diseases": reference["diseases"],
        "areas": reference["areas"],
        "limits": {
            "max_bytes": rules.max_bytes,
            "max_size_label": rules.size_label,
            "max_files": rules.max_files,
            "quota": quota,
            "used": user.file_upload_count,
            "remaining": max(0, quota - user.file_upload_count),
        },
    }


async def _upload_page(
    request: Request, gateway: Gateway, user: User | None, rules: UploadRules, template: str
) -> Response:
    if user is None:
        return login_redirect(request)
    context = await _upload_form_context(gateway, user, rules)
    return render(request, template, {**context, "values": {}}, user=user)


async def _upload_post(
    request: Request, gateway: Gateway, user: User | None, rules: UploadRules, template: str
) -> Response:
    """An upload page's form. With JavaScript (the CSRF header): a JSON answer, and the page
    shows any error itself. Without: a redirect to the job, or the page again with the error.
    (The CSRF token was checked by the app-wide dependency before any file byte was read.)"""
    if CSRF_HEADER.lower() in request.headers:
        if user is None:
            return JSONResponse({"detail": SESSION_ENDED}, status.HTTP_401_UNAUTHORIZED)
        result = await run_upload(request, gateway, user, rules=rules)
        return JSONResponse(result, status.HTTP_201_CREATED)
    if user is None:
        return login_redirect(request)
    try:
        received = await run_upload(request, gateway, user, rules=rules)
    except GatewayError as refused:
        fresh = await gateway.accounts.get(user.username) or user
        context = await _upload_form_context(gateway, fresh, rules)
        return render(
            request,
            template,
            {**context, "error": refused.message, "values": {}},
            user=fresh,
            status_code=refused.status_code,
        )
    return RedirectResponse(received["processing_url"], status.HTTP_303_SEE_OTHER)


@router.get("/direct/upload", response_model=None)
async def upload_page(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    return await _upload_page(request, gateway, user, direct_rules(gateway.settings), "upload.html")


@router.post("/direct/upload", response_model=None)
async def upload(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    return await _upload_post(request, gateway, user, direct_rules(gateway.settings), "upload.html")


@router.get("/upload_files", response_model=None)
async def zip_upload_page(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    return await _upload_page(
        request, gateway, user, zip_rules(gateway.settings), "upload_zip.html"
    )


@router.post("/upload_files", response_model=None)
async def zip_upload(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    return await _upload_post(
        request, gateway, user, zip_rules(gateway.settings), "upload_zip.html"
    )


# --- one job --------------------------------------------------------------------------------


async def _job_page(
    request: Request, gateway: Gateway, user: User | None, job_id: str, template: str
) -> Response:
    if user is None:
        return login_redirect(request)
    view = await find_job_view(job_id, docs=gateway.docs, access=Access(user))
    if view is None:
        return render_error(
            request,
            user=user,
            title="Upload job not found",
            message="There is no upload job with this token. Please check the link, or find "
            "the job in Recent Jobs.",
            status_code=status.HTTP_404_NOT_FOUND,
        )
    names = await gateway.reference.names()
    pages = job_pages(view["kind"], job_id)
    return render(request, template, {"job": view, "names": names, "pages": pages}, user=user)


@router.get("/direct/upload/processing/{job_id}", response_model=None)
async def processing_page(
    request: Request, job_id: str, gateway: GatewayDep, user: OptionalUser
) -> Response:
    return await _job_page(request, gateway, user, job_id, "processing.html")


@router.get("/direct/upload/results/{job_id}", response_model=None)
async def results_page(
    request: Request, job_id: str, gateway: GatewayDep, user: OptionalUser
) -> Response:
    return await _job_page(request, gateway, user, job_id, "results.html")


@router.get("/upload_files/processing/{job_id}", response_model=None)
async def zip_processing_page(
    request: Request, job_id: str, gateway: GatewayDep, user: OptionalUser
) -> Response:
    return await _job_page(request, gateway, user, job_id, "processing.html")


@router.get("/upload_files/results/{job_id}", response_model=None)
async def zip_results_page(
    request: Request, job_id: str, gateway: GatewayDep, user: OptionalUser
) -> Response:
    return await _job_page(request, gateway, user, job_id, "results.html")


# --- recent jobs ----------------------------------------------------------------------------


@router.get("/jobs", response_model=None)
async def jobs_page(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    as_json = wants_json(request)
    if user is None:
        if as_json:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "Please sign in",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return login_redirect(request)
    jobs = await recent_jobs(
        docs=gateway.docs, access=Access(user), limit=gateway.settings.recent_jobs_limit
    )
    if as_json:
        return JSONResponse({"jobs": jobs}, headers={"Cache-Control": "no-store", "Vary": "Accept"})
    response = render(
        request, "jobs.html", {"jobs": jobs, "limit": gateway.settings.recent_jobs_limit}, user=user
    )
    response.headers["Vary"] = "Accept"
    return response
