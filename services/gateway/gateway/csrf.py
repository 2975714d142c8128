"""Cross-site request forgery protection for everything a browser does with the session cookie.

A random token lives in the (signed) session. Pages put it in every form as the hidden field
`csrf_token`; the pages' JavaScript sends it as the `X-CSRF-Token` header. A state-changing
request that the session cookie would authenticate must carry it; a site that merely makes the
browser send our cookie cannot read the token, so it cannot forge the request. Requests that
carry an `Authorization: Bearer` header are never authenticated by the cookie (see deps), so
programs using API tokens need no CSRF token.
"""

from __future__ import annotations

import secrets
from collections.abc import MutableMapping
from typing import Any

from fastapi import HTTPException, Request, status

from gateway.deps import SESSION_USER

__all__ = [
    "CSRF_FAILED",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "csrf_token",
    "new_csrf_token",
    "require_csrf",
    "token_matches",
    "uses_session_auth",
]

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FAILED = (
    "This page has expired or was opened in another session. "
    "Please reload the page and try again."
)
_SESSION_KEY = "csrf_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _session(request: Request) -> MutableMapping[str, Any]:
    session: MutableMapping[str, Any] = request.scope.setdefault("session", {})
    return session


def csrf_token(request: Request) -> str:
    """This session's token, created on first use."""
    session = _session(request)
    token = session.get(_SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[_SESSION_KEY] = token
    return token


def new_csrf_token(request: Request) -> str:
    """A fresh token (on sign-in and sign-out: a token seen before then is worth nothing)."""
    _session(request).pop(_SESSION_KEY, None)
    return csrf_token(request)


def token_matches(request: Request, sent: str | None) -> bool:
    expected = _session(request).get(_SESSION_KEY)
    if not sent or not isinstance(expected, str) or not expected:
        return False
    return secrets.compare_digest(sent.encode(), expected.encode())


def uses_session_auth(request: Request) -> bool:
    """Whether the cookie, not a bearer token, would say who is asking."""
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return False
    return bool(_session(request).get(SESSION_USER))


async def require_csrf(request: Request) -> None:
    """Dependency for JSON/API routers: refuses a cookie-authenticated state change that does
    not carry this session's token (header, or the form field of a urlencoded form)."""
    if request.method in _SAFE_METHODS or not uses_session_auth(request):
        return
    sent = request.headers.get(CSRF_HEADER)
    content_type = request.headers.get("content-type", "")
    if sent is None and content_type.startswith("application/x-www-form-urlencoded"):
        value = (await request.form()).get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not token_matches(request, sent):
        raise HTTPException(status.HTTP_403_FORBIDDEN, CSRF_FAILED)
