"""Your account: API tokens (see, create, revoke), your password, where you are signed in.

Users manage their own tokens; administrators anyone's (here through the API with
``?username=``, and on the user's administration page). A token is shown once, when made.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.accounts import ApiToken, User
from gateway.deps import CurrentUser, Gateway, GatewayDep, OptionalUser, session_id
from gateway.errors import GatewayError
from gateway.forms import small_form
from gateway.pages import flash, login_redirect, render

__all__ = ["MIN_PASSWORD", "api_router", "page_router", "revoke_token"]

MIN_PASSWORD = 8
NO_SUCH_TOKEN = "No such API token."
WRONG_CURRENT_PASSWORD = "Your current password is not correct."
PASSWORD_TOO_SHORT = f"The new password must be at least {MIN_PASSWORD} characters long."


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(default="", max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


def token_json(token: ApiToken) -> dict[str, Any]:
    return token.model_dump()


async def _owner(gateway: Gateway, user: User, username: str | None) -> str:
    """Whose tokens: your own, or (administrators) anyone's."""
    if username is None or username.strip().lower() == user.username:
        return user.username
    if not user.is_admin:
        raise GatewayError("You may only manage your own API tokens.", status_code=403)
    subject = await gateway.accounts.get(username)
    if subject is None:
        raise GatewayError("No such user.", status_code=404)
    return subject.username


async def create_token(
    gateway: Gateway,
    request: Request,
    *,
    by: User,
    owner: str,
    label: str,
    expires_in_days: int | None,
) -> tuple[str, ApiToken]:
    token, info = await gateway.accounts.create_token(
        owner, label=label, expires_in_days=expires_in_days
    )
    await gateway.audit_request(
        request,
        "token_created",
        actor=by.username,
        subject=owner,
        token_id=info.token_id,
    )
    return token, info


async def revoke_token(gateway: Gateway, request: Request, *, by: User, token_id: str) -> str:
    """Revoke a token `by` may manage; returns its owner."""
    token = await gateway.accounts.token(token_id)
    if token is None or (token.username != by.username and not by.is_admin):
        raise GatewayError(NO_SUCH_TOKEN, status_code=404)
    await gateway.accounts.revoke_token(token_id)
    await gateway.audit_request(
        request,
        "token_revoked",
        actor=by.username,
        subject=token.username,
        token_id=token_id,
    )
    return token.username


# --- JSON API -------------------------------------------------------------------------------

api_router = APIRouter(prefix="/api", tags=["account"])


@api_router.get("/tokens")
async def api_tokens(
    gateway: GatewayDep, user: CurrentUser, username: str | None = None
) -> dict[str, Any]:
    """Your API tokens (administrators: `?username=` for anyone's). Never the tokens
    themselves: those are shown once, when created."""
    owner = await _owner(gateway, user, username)
    return {
        "username": owner,
        "tokens": [token_json(t) for t in await gateway.accounts.tokens(owner)],
    }


@api_router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def api_create_token(
    new: TokenIn,
    request: Request,
    gateway: GatewayDep,
    user: CurrentUser,
    username: str | None = None,
) -> dict[str, Any]:
    """A new API token; `token` in the answer is shown this once."""
    owner = await _owner(gateway, user, username)
    token, info = await create_token(
        gateway, request, by=user, owner=owner, label=new.label, expires_in_days=new.expires_in_days
    )
    return {"token": token, **token_json(info)}


@api_router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def api_revoke_token(
    token_id: str, request: Request, gateway: GatewayDep, user: CurrentUser
) -> None:
    await revoke_token(gateway, request, by=user, token_id=token_id)


# --- pages ----------------------------------------------------------------------------------

page_router = APIRouter(prefix="/account", include_in_schema=False)


async def _account_page(
    request: Request,
    gateway: Gateway,
    user: User,
    *,
    new_token: str | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "account.html",
        {
            "tokens": await gateway.accounts.tokens(user.username),
            "sessions": await gateway.sessions.of(user.username),
            "current_session": session_id(request),
            "new_token": new_token,
            "min_password": MIN_PASSWORD,
            "nav": "account",
        },
        user=user,
        status_code=status_code,
    )


@page_router.get("", response_model=None)
async def account_page(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    if user is None:
        return login_redirect(request)
    return await _account_page(request, gateway, user)


@page_router.post("/tokens", response_model=None)
async def account_create_token(
    request: Request, gateway: GatewayDep, user: OptionalUser
) -> Response:
    if user is None:
        return login_redirect(request)
    form = await small_form(request)
    days_text = str(form.get("expires_in_days") or "").strip()
    try:
        new = TokenIn(
            label=str(form.get("label") or "").strip(),
            expires_in_days=int(days_text) if days_text else None,
        )
    except ValueError:
        flash(
            request,
            "Expiry must be a number of days from 1 to 3650, or blank for never.",
            kind="error",
        )
        return RedirectResponse("/account", status.HTTP_303_SEE_OTHER)
    token, info = await create_token(
        gateway,
        request,
        by=user,
        owner=user.username,
        label=new.label,
        expires_in_days=new.expires_in_days,
    )
    flash(request, f"Created API token {info.token_id}. Copy it now: it is shown only once.")
    return await _account_page(
        request, gateway, user, new_token=token, status_code=status.HTTP_201_CREATED
    )


@page_router.post("/tokens/{token_id}/revoke", response_model=None)
async def account_revoke_token(
    token_id: str, request: Request, gateway: GatewayDep, user: OptionalUser
) -> Response:
    if user is None:
        return login_redirect(request)
    owner = await revoke_token(gateway, request, by=user, token_id=token_id)
    flash(request, f"Revoked API token {token_id}.")
    back = "/account" if owner == user.username else f"/admin/users/{owner}"
    return RedirectResponse(back, status.HTTP_303_SEE_OTHER)


@page_router.post("/password", response_model=None)
async def account_password(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    """Change your own password; every other session of yours ends."""
    if user is None:
        return login_redirect(request)
    form = await small_form(request)
    current = str(form.get("current_password") or "")
    new = str(form.get("new_password") or "")
    if await gateway.accounts.authenticate(user.username, current) is None:
        flash(request, WRONG_CURRENT_PASSWORD, kind="error")
    elif len(new) < MIN_PASSWORD or len(new) > 200:
        flash(request, PASSWORD_TOO_SHORT, kind="error")
    else:
        await gateway.accounts.update(user.username, password=new)
        await gateway.sessions.end_all(user.username, except_session=session_id(request))
        await gateway.audit_request(
            request,
            "password_changed",
            actor=user.username,
            subject=user.username,
        )
        flash(request, "Your password was changed; you were signed out everywhere else.")
    return RedirectResponse("/account", status.HTTP_303_SEE_OTHER)


@page_router.post("/sessions/end-others", response_model=None)
async def account_end_other_sessions(
    request: Request, gateway: GatewayDep, user: OptionalUser
) -> Response:
    if user is None:
        return login_redirect(request)
    ended = await gateway.sessions.end_all(user.username, except_session=session_id(request))
    await gateway.audit_request(
        request,
        "signed_out_elsewhere",
        actor=user.username,
        subject=user.username,
        sessions=ended,
    )
    flash(request, f"Signed out of {ended} other session{'s' if ended != 1 else ''}.")
    return RedirectResponse("/account", status.HTTP_303_SEE_OTHER)
