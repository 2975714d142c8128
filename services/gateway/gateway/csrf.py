"""Cross-site request forgery protection, in one place, for everything a browser does with
the session cookie.

A random token lives in the session. Pages put it in every form as the hidden field
`csrf_token` (first in the form); the pages' JavaScript sends it as the `X-CSRF-Token` header.
A state-changing request that the session cookie would authenticate (and every sign-in) must
carry it; a site that merely makes the browser send our cookie cannot read the token, so it
cannot forge the request. Requests with an `Authorization: Bearer` header are never
authenticated by the cookie (see deps), so programs using API tokens need no CSRF token.

`CsrfMiddleware` finds the token wherever the request carries it (the header, a urlencoded
form field, or the first field of a multipart form, read without consuming the stream the
route will read: an upload is checked before any of its file bytes are) and records the
verdict; the app-wide dependency `require_csrf` refuses the request on a bad one.
"""

from __future__ import annotations

import secrets
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.deps import SESSION_ID
from gateway.errors import GatewayError

__all__ = [
    "CSRF_FAILED",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "CsrfFailed",
    "CsrfMiddleware",
    "csrf_token",
    "new_csrf_token",
    "require_csrf",
]

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FAILED = (
    "This page has expired or was opened in another session. Please reload the page and try again."
)
SESSION_KEY = "csrf_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Always checked, signed in or not: a forged sign-in would sign the victim in as the forger.
_ALWAYS_CHECKED = frozenset({"/login"})
# The token field comes first; never buffer more than this looking for it.
_PEEK_LIMIT = 64 * 1024
_VERDICT = "csrf_ok"


class CsrfFailed(GatewayError):
    def __init__(self) -> None:
        super().__init__(CSRF_FAILED, status_code=403)


def _session(request: Request) -> MutableMapping[str, Any]:
    session: MutableMapping[str, Any] = request.scope.setdefault("session", {})
    return session


def csrf_token(request: Request) -> str:
    """This session's token, created on first use."""
    session = _session(request)
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return token


def new_csrf_token(request: Request) -> str:
    """A fresh token (on sign-in and sign-out: a token seen before then is worth nothing)."""
    _session(request).pop(SESSION_KEY, None)
    return csrf_token(request)


def _matches(session: Any, sent: str | None) -> bool:
    expected = session.get(SESSION_KEY) if isinstance(session, MutableMapping) else None
    if not sent or not isinstance(expected, str) or not expected:
        return False
    return secrets.compare_digest(sent.encode(), expected.encode())


def _needs_check(scope: Scope) -> bool:
    if scope["method"] in _SAFE_METHODS:
        return False
    headers = dict(scope["headers"])
    if headers.get(b"authorization", b"").lower().startswith(b"bearer "):
        return False
    session = scope.get("session") or {}
    return scope["path"] in _ALWAYS_CHECKED or bool(session.get(SESSION_ID))


class _Replay:
    """`receive` that first hands back the body chunks already read, then the rest."""

    def __init__(self, buffered: list[Message], receive: Receive) -> None:
        self._buffered = buffered
        self._receive = receive

    async def __call__(self) -> Message:
        if self._buffered:
            return self._buffered.pop(0)
        return await self._receive()


async def _peek_token(scope: Scope, receive: Receive) -> tuple[str | None, Receive]:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    if CSRF_HEADER.lower() in headers:
        return headers[CSRF_HEADER.lower()], receive
    content_type = headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind == b"application/x-www-form-urlencoded":
        return await _peek_urlencoded(receive)
    if kind == b"multipart/form-data" and options.get(b"boundary"):
        return await _peek_multipart(options[b"boundary"], receive)
    return None, receive


async def _peek_urlencoded(receive: Receive) -> tuple[str | None, Receive]:
    buffered: list[Message] = []
    body = bytearray()
    more = True
    while more and len(body) <= _PEEK_LIMIT:
        message = await receive()
        buffered.append(message)
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
    try:
        values = parse_qs(body.decode("latin-1"), max_num_fields=200).get(CSRF_FIELD, [])
    except ValueError:  # more fields than any of our forms has: no token worth finding
        values = []
    return (values[0] if values else None), _Replay(buffered, receive)


async def _peek_multipart(boundary: bytes, receive: Receive) -> tuple[str | None, Receive]:
    buffered: list[Message] = []
    state: dict[str, Any] = {"name": None, "value": bytearray(), "done": False}
    header_field, header_value = bytearray(), bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if header_field.decode("latin-1").lower() == "content-disposition":
            _, params = parse_options_header(bytes(header_value))
            state["name"] = params.get(b"name", b"").decode("latin-1")
            state["file"] = b"filename" in params
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["value"].extend(data[start:end])

    def on_part_end() -> None:
        state["done"] = True

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    seen = 0
    while not state["done"] and seen <= _PEEK_LIMIT and len(state["value"]) <= 1024:
        message = await receive()
        buffered.append(message)
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        seen += len(chunk)
        try:
            parser.write(chunk)
        except Exception:
            break  # malformed: no token found; the route reports the form itself
        if not message.get("more_body", False):
            break
    token = None
    if state["done"] and state["name"] == CSRF_FIELD and not state.get("file"):
        token = bytes(state["value"]).decode("utf-8", "replace")
    return token, _Replay(buffered, receive)


class CsrfMiddleware:
    """Sits inside the session middleware; records whether an unsafe cookie-authenticated
    request carried this session's token (`require_csrf` acts on it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _needs_check(scope):
            sent, receive = await _peek_token(scope, receive)
            scope.setdefault("state", {})[_VERDICT] = _matches(scope.get("session"), sent)
        await self.app(scope, receive, send)


async def require_csrf(request: Request) -> None:
    """The app-wide dependency: refuses what the middleware found without a valid token."""
    if request.scope.get("state", {}).get(_VERDICT) is False:
        raise CsrfFailed
