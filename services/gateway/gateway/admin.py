"""Administration: reference data (hospitals, lab units, cameras, diseases, areas) and users.

The same operations twice: a JSON API under /api/admin (bearer token, or the session cookie
with the CSRF header) and plain HTML pages under /admin whose forms post back and redirect.
Administrators only; everyone else gets 403 (the API) or a friendly page (the pages).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from gateway.accounts import ROLES, Role, User, UserExists
from gateway.deps import AdminUser, Gateway, GatewayDep, OptionalUser
from gateway.errors import GatewayError
from gateway.forms import small_form
from gateway.pages import flash, login_redirect, render, render_error
from gateway.reference import KINDS, slug

__all__ = ["AdminError", "api_router", "page_router"]

KIND_LABELS = {
    "hospitals": ("Hospitals", "hospital"),
    "lab_units": ("Lab units", "lab unit"),
    "cameras": ("Cameras", "camera"),
    "diseases": ("Diseases", "disease"),
    "areas": ("Areas", "area"),
}
MIN_PASSWORD = 8
# Far beyond any site's need, and well inside what every documents store can count.
MAX_QUOTA = 1_000_000_000
NOT_ADMIN = "This page is for administrators only."


class AdminError(GatewayError):
    """A refused admin action, with the message the administrator sees."""


# --- what can be asked ----------------------------------------------------------------------


def _unicode(value: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError:  # refused as pydantic refuses it in a constrained string
        raise PydanticCustomError(
            "string_unicode",
            "Input should be a valid string, unable to parse raw data as a unicode string",
        ) from None
    return value


# The id of a hospital or lab unit, as sent. JSON can carry a lone surrogate ("\ud800") that
# neither the documents store nor a JSON answer can encode as UTF-8 (it was a 500); pydantic
# lets one through a plain `str` (its constrained strings refuse it), so it is checked here.
ReferenceId = Annotated[str, AfterValidator(_unicode)]


class ReferenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    hospital_id: ReferenceId | None = None  # lab units only
    id: str | None = Field(default=None, max_length=100)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("a name is required")
        return value


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=r"^\s*[A-Za-z0-9._@-]+\s*$")
    role: Role
    password: str = Field(min_length=MIN_PASSWORD, max_length=200)
    lab_unit_ids: list[ReferenceId] = []
    upload_quota: int | None = Field(default=None, ge=0, le=MAX_QUOTA)


class UserPatch(BaseModel):
    """Only the fields sent are changed; `upload_quota: null` means the site default."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    lab_unit_ids: list[ReferenceId] | None = None
    upload_quota: int | None = Field(default=None, ge=0, le=MAX_QUOTA)
    password: str | None = Field(default=None, min_length=MIN_PASSWORD, max_length=200)
    active: bool | None = None


def _user_json(user: User, default_quota: int) -> dict[str, Any]:
    return {**user.model_dump(), "upload_quota_effective": user.quota(default_quota)}


# --- the operations -------------------------------------------------------------------------


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise AdminError(
            f"Unknown kind of reference data: {kind}", status_code=status.HTTP_404_NOT_FOUND
        )
    return kind


async def _check_hospital(gateway: Gateway, kind: str, hospital_id: str | None) -> None:
    if kind != "lab_units":
        return
    if not hospital_id:
        raise AdminError("Choose the hospital this lab unit belongs to.")
    if await gateway.reference.active("hospitals", hospital_id) is None:
        raise AdminError("Unknown hospital: choose one from the list.")


async def add_reference(gateway: Gateway, kind: str, item: ReferenceIn) -> dict[str, Any]:
    kind = _kind(kind)
    await _check_hospital(gateway, kind, item.hospital_id)
    item_id = slug(item.id or item.name)
    if (
        kind == "lab_units"
        and not item.id
        and await gateway.reference.get(kind, item_id) is not None
    ):
        item_id = slug(f"{item.hospital_id}-{item.name}")  # "Eye Ward" in two hospitals
    label = KIND_LABELS[kind][1]
    if await gateway.reference.get(kind, item_id) is not None:
        raise AdminError(
            f"A {label} with this name already exists.", status_code=status.HTTP_409_CONFLICT
        )
    existing = {
        i["name"].casefold()
        for i in await gateway.reference.list(kind)
        if kind != "lab_units" or i["hospital_id"] == item.hospital_id
    }
    if item.name.casefold() in existing:
        raise AdminError(
            f"A {label} with this name already exists.", status_code=status.HTTP_409_CONFLICT
        )
    return await gateway.reference.put(
        kind, {"id": item_id, "name": item.name, "hospital_id": item.hospital_id}
    )


async def rename_reference(
    gateway: Gateway, kind: str, item_id: str, item: ReferenceIn
) -> dict[str, Any]:
    """A new name (and, for a lab unit, hospital); the id, and so every record that points
    at it, stays the same."""
    kind = _kind(kind)
    current = await gateway.reference.get(kind, item_id)
    if current is None:
        raise AdminError(f"No such {KIND_LABELS[kind][1]}.", status_code=status.HTTP_404_NOT_FOUND)
    hospital_id = item.hospital_id or current.get("hospital_id")
    await _check_hospital(gateway, kind, hospital_id)
    return await gateway.reference.put(
        kind, {"id": item_id, "name": item.name, "hospital_id": hospital_id}
    )


async def delete_reference(gateway: Gateway, kind: str, item_id: str) -> None:
    kind = _kind(kind)
    label = KIND_LABELS[kind][1]
    if await gateway.reference.get(kind, item_id) is None:
        raise AdminError(f"No such {label}.", status_code=status.HTTP_404_NOT_FOUND)
    if kind == "hospitals":
        units = [
            u for u in await gateway.reference.list("lab_units") if u["hospital_id"] == item_id
        ]
        if units:
            raise AdminError(
                "This hospital still has lab units "
                f"({', '.join(u['name'] for u in units)}). Retire them first.",
                status_code=status.HTTP_409_CONFLICT,
            )
    # Retired, not forgotten: old jobs and uploads keep showing its name.
    await gateway.reference.retire(kind, item_id)


async def restore_reference(gateway: Gateway, kind: str, item_id: str) -> None:
    kind = _kind(kind)
    current = await gateway.reference.get(kind, item_id)
    if current is None:
        raise AdminError(f"No such {KIND_LABELS[kind][1]}.", status_code=status.HTTP_404_NOT_FOUND)
    if (
        kind == "lab_units"
        and await gateway.reference.active("hospitals", current.get("hospital_id") or "") is None
    ):
        raise AdminError(
            "Its hospital is retired: restore the hospital first.",
            status_code=status.HTTP_409_CONFLICT,
        )
    await gateway.reference.restore(kind, item_id)


async def _check_lab_units(gateway: Gateway, lab_unit_ids: list[str]) -> tuple[str, ...]:
    known = {u["id"] for u in await gateway.reference.list("lab_units")}
    unknown = [i for i in lab_unit_ids if i not in known]
    if unknown:
        raise AdminError(f"Unknown lab unit: {', '.join(unknown)}")
    return tuple(dict.fromkeys(lab_unit_ids))


async def create_user(gateway: Gateway, new: UserIn) -> User:
    lab_units = await _check_lab_units(gateway, new.lab_unit_ids)
    try:
        return await gateway.accounts.create_user(
            username=new.username,
            role=new.role,
            password=new.password,
            lab_unit_ids=lab_units,
            upload_quota=new.upload_quota,
        )
    except UserExists:
        raise AdminError(
            f"A user named {new.username.strip().lower()!r} already exists.",
            status_code=status.HTTP_409_CONFLICT,
        ) from None


async def update_user(gateway: Gateway, username: str, patch: UserPatch, *, by: User) -> User:
    if await gateway.accounts.get(username) is None:
        raise AdminError("No such user.", status_code=status.HTTP_404_NOT_FOUND)
    changes: dict[str, Any] = {k: getattr(patch, k) for k in patch.model_fields_set}
    for name in ("role", "password", "active", "lab_unit_ids"):
        if name in changes and changes[name] is None:
            del changes[name]
    if "lab_unit_ids" in changes:
        changes["lab_unit_ids"] = await _check_lab_units(gateway, changes["lab_unit_ids"])
    if username.strip().lower() == by.username and (
        changes.get("role", "admin") != "admin" or changes.get("active", True) is False
    ):
        raise AdminError(
            "You cannot remove your own administrator access or deactivate your own account.",
            status_code=status.HTTP_409_CONFLICT,
        )
    updated = (
        await gateway.accounts.update(username.strip().lower(), **changes)
        if changes
        else await gateway.accounts.get(username)
    )
    if updated is None:
        raise AdminError("No such user.", status_code=status.HTTP_404_NOT_FOUND)
    if "password" in changes or changes.get("active") is False:
        # A new password or a disabled account: whoever holds an old session is out.
        await gateway.sessions.end_all(updated.username)
    await gateway.audit.record(
        "user_changed",
        actor=by.username,
        subject=updated.username,
        fields=sorted(k for k in changes if k != "password")
        + (["password"] if "password" in changes else []),
    )
    return updated


async def sign_out_everywhere(gateway: Gateway, username: str, *, by: User) -> int:
    subject = await gateway.accounts.get(username)
    if subject is None:
        raise AdminError("No such user.", status_code=status.HTTP_404_NOT_FOUND)
    ended = await gateway.sessions.end_all(subject.username)
    await gateway.audit.record(
        "signed_out_everywhere", actor=by.username, subject=subject.username, sessions=ended
    )
    return ended


# --- JSON API -------------------------------------------------------------------------------


api_router = APIRouter(prefix="/api/admin", tags=["admin"])


@api_router.get("/reference")
async def api_reference(gateway: GatewayDep, admin: AdminUser) -> dict[str, Any]:
    """Every item, retired ones too (marked `"retired": true`)."""
    return await gateway.reference.all(include_retired=True)


@api_router.post("/reference/{kind}", status_code=status.HTTP_201_CREATED)
async def api_add_reference(
    kind: str, item: ReferenceIn, gateway: GatewayDep, admin: AdminUser
) -> dict[str, Any]:
    return await add_reference(gateway, kind, item)


@api_router.put("/reference/{kind}/{item_id}")
async def api_rename_reference(
    kind: str, item_id: str, item: ReferenceIn, gateway: GatewayDep, admin: AdminUser
) -> dict[str, Any]:
    return await rename_reference(gateway, kind, item_id, item)


@api_router.delete("/reference/{kind}/{item_id}", status_code=status.HTTP_204_NO_CONTENT)
async def api_delete_reference(
    kind: str, item_id: str, gateway: GatewayDep, admin: AdminUser
) -> None:
    await delete_reference(gateway, kind, item_id)


@api_router.get("/users")
async def api_users(gateway: GatewayDep, admin: AdminUser) -> dict[str, Any]:
    default = gateway.settings.max_files_per_upload
    return {
        "users": [_user_json(u, default) for u in await gateway.accounts.all()],
        "default_quota": default,
    }


@api_router.post("/users", status_code=status.HTTP_201_CREATED)
async def api_create_user(new: UserIn, gateway: GatewayDep, admin: AdminUser) -> dict[str, Any]:
    user = await create_user(gateway, new)
    return _user_json(user, gateway.settings.max_files_per_upload)


@api_router.patch("/users/{username}")
async def api_update_user(
    username: str, patch: UserPatch, gateway: GatewayDep, admin: AdminUser
) -> dict[str, Any]:
    user = await update_user(gateway, username, patch, by=admin)
    return _user_json(user, gateway.settings.max_files_per_upload)


@api_router.post("/users/{username}/sign-out")
async def api_sign_out_everywhere(
    username: str, gateway: GatewayDep, admin: AdminUser
) -> dict[str, Any]:
    """End every session of the user (their API tokens are revoked separately)."""
    return {"sessions_ended": await sign_out_everywhere(gateway, username, by=admin)}


# --- pages ----------------------------------------------------------------------------------


page_router = APIRouter(prefix="/admin", include_in_schema=False)


async def _admin_or_page(request: Request, user: User | None) -> Response | None:
    """None when an administrator is signed in; otherwise the page to show instead."""
    if user is None:
        return login_redirect(request)
    if not user.is_admin:
        return render_error(
            request,
            user=user,
            title="Administrators only",
            message=NOT_ADMIN + " If you need a change to users or reference "
            "data, please ask your administrator.",
            status_code=status.HTTP_403_FORBIDDEN,
        )
    return None


async def _posted(request: Request) -> dict[str, Any]:
    """The posted form's fields (its CSRF token was checked by the app-wide dependency)."""
    form = await small_form(request)
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            if key in fields:
                existing = fields[key]
                fields[key] = (
                    [*existing, value] if isinstance(existing, list) else [existing, value]
                )
            else:
                fields[key] = value
    return fields


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if v]


def _validation_message(error: ValidationError) -> str:
    names = {
        "name": "Name",
        "username": "Username",
        "password": "Password",
        "upload_quota": "Upload quota",
        "role": "Role",
    }
    first = error.errors()[0]
    field = names.get(str(first["loc"][0]) if first["loc"] else "", "A field")
    if first["loc"] and first["loc"][0] == "password":
        return f"Password must be at least {MIN_PASSWORD} characters long."
    if first["loc"] and first["loc"][0] == "username":
        return "Username may contain only letters, digits, dots, dashes, underscores and @."
    if first["loc"] and first["loc"][0] == "upload_quota":
        return "Upload quota must be a whole number of 0 or more, or blank for the site default."
    return f"{field}: {first['msg']}"


def _quota(value: Any) -> int | str | None:
    text = str(value or "").strip()
    if not text:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _back(target: str) -> RedirectResponse:
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


@page_router.get("/reference", response_model=None)
async def reference_page(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    if (refused := await _admin_or_page(request, user)) is not None:
        return refused
    reference = await gateway.reference.all()
    everything = await gateway.reference.all(include_retired=True)
    retired = {kind: [i for i in items if i.get("retired")] for kind, items in everything.items()}
    hospital_names = {h["id"]: h["name"] for h in everything["hospitals"]}
    return render(
        request,
        "admin_reference.html",
        {
            "reference": reference,
            "retired": retired,
            "kinds": KIND_LABELS,
            "hospital_names": hospital_names,
        },
        user=user,
    )


@page_router.post("/reference/{kind}", response_model=None)
async def reference_add(
    kind: str, request: Request, gateway: GatewayDep, user: OptionalUser
) -> Response:
    if (refused := await _admin_or_page(request, user)) is not None:
        return refused
    back = f"/admin/reference#{kind}"
    form = await _posted(request)
    try:
        item = ReferenceIn(name=form.get("name", ""), hospital_id=form.get("hospital_id") or None)
        added = await add_reference(gateway, kind, item)
    except ValidationError:
        flash(request, "Please enter a name.", kind="error")
    except AdminError as error:
        flash(request, error.message, kind="error")
    else:
        flash(request, f"Added {KIND_LABELS[kind][1]} “{added['name']}”.")
    return _back(back)


@page_router.post("/reference/{kind}/{item_id}", response_model=None)
async def reference_change(
    kind: str, item_id: str, request: Request, gateway: GatewayDep, user: OptionalUser
) -> Response:
    """Rename (action=rename) or delete (action=delete) one item."""
    if (refused := await _admin_or_page(request, user)) is not None:
        return refused
    back = f"/admin/reference#{kind}"
    form = await _posted(request)
    try:
        if form.get("action") == "delete":
            current = await gateway.reference.get(_kind(kind), item_id)
            await delete_reference(gateway, kind, item_id)
            flash(
                request,
                f"Retired {KIND_LABELS[kind][1]} “{(current or {}).get('name')}”: "
                "it is no longer offered; old uploads keep its name.",
            )
        elif form.get("action") == "restore":
            current = await gateway.reference.get(_kind(kind), item_id)
            await restore_reference(gateway, kind, item_id)
            flash(request, f"Restored {KIND_LABELS[kind][1]} “{(current or {}).get('name')}”.")
        else:
            item = ReferenceIn(
                name=form.get("name", ""), hospital_id=form.get("hospital_id") or None
            )
            renamed = await rename_reference(gateway, kind, item_id, item)
            flash(request, f"Saved {KIND_LABELS[kind][1]} “{renamed['name']}”.")
    except ValidationError:
        flash(request, "Please enter a name.", kind="error")
    except AdminError as error:
        flash(request, error.message, kind="error")
    return _back(back)


async def _users_context(gateway: Gateway) -> dict[str, Any]:
    reference = await gateway.reference.all()
    hospital_names = {h["id"]: h["name"] for h in reference["hospitals"]}
    lab_units = sorted(
        reference["lab_units"], key=lambda u: (hospital_names.get(u["hospital_id"], ""), u["name"])
    )
    return {
        "users": await gateway.accounts.all(),
        "lab_units": lab_units,
        "lab_unit_names": {
            u["id"]: f"{u['name']} ({hospital_names.get(u['hospital_id'], '?')})" for u in lab_units
        },
        "hospital_names": hospital_names,
        "roles": ROLES,
        "default_quota": gateway.settings.max_files_per_upload,
        "min_password": MIN_PASSWORD,
    }


@page_router.get("/users", response_model=None)
async def users_page(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    if (refused := await _admin_or_page(request, user)) is not None:
        return refused
    return render(request, "admin_users.html", await _users_context(gateway), user=user)


@page_router.post("/users", response_model=None)
async def users_create(request: Request, gateway: GatewayDep, user: OptionalUser) -> Response:
    if (refused := await _admin_or_page(request, user)) is not None:
        return refused
    form = await _posted(request)
    try:
        new = UserIn.model_validate(
            {
                "username": form.get("username", ""),
                "role": form.get("role", ""),
                "password": form.get("password", ""),
                "lab_unit_ids": _as_list(form.get("lab_unit_ids")),
                "upload_quota": _quota(form.get("upload_quota")),
            }
        )
        created = await create_user(gateway, new)
    except ValidationError as error:
        flash(request, _validation_message(error), kind="error")
    except AdminError as error:
        flash(request, error.message, kind="error")
    else:
        flash(request, f"Created user “{created.username}”.")
    return _back("/admin/users")


@page_router.get("/users/{username}", response_model=None)
async def user_page(
    username: str, request: Request, gateway: GatewayDep, user: OptionalUser
) -> Response:
    if (refused := await _admin_or_page(request, user)) is not None:
        return refused
    subject = await gateway.accounts.get(username)
    if subject is None:
        return render_error(
            request,
            user=user,
            title="User not found",
            message=f"There is no user named “{username}”.",
            status_code=status.HTTP_404_NOT_FOUND,
        )
    return render(
        request,
        "admin_user.html",
        {
            **await _users_context(gateway),
            "subject": subject,
            "tokens": await gateway.accounts.tokens(subject.username),
            "sessions": await gateway.sessions.of(subject.username),
        },
        user=user,
    )


@page_router.post("/users/{username}/sign-out", response_model=None)
async def user_sign_out(
    username: str, request: Request, gateway: GatewayDep, user: OptionalUser
) -> Response:
    """ "Sign out everywhere": every session of the user ends at once."""
    if (refused := await _admin_or_page(request, user)) is not None:
        return refused
    assert user is not None
    await small_form(request)
    ended = await sign_out_everywhere(gateway, username, by=user)
    flash(
        request, f"Signed “{username}” out everywhere ({ended} session{'s' if ended != 1 else ''})."
    )
    return _back(f"/admin/users/{username}")


@page_router.post("/users/{username}", response_model=None)
async def user_save(
    username: str, request: Request, gateway: GatewayDep, user: OptionalUser
) -> Response:
    if (refused := await _admin_or_page(request, user)) is not None:
        return refused
    assert user is not None
    back = f"/admin/users/{username}"
    form = await _posted(request)
    fields: dict[str, Any] = {
        "role": form.get("role") or None,
        "lab_unit_ids": _as_list(form.get("lab_unit_ids")),
        "upload_quota": _quota(form.get("upload_quota")),
        "active": form.get("active") == "on",
    }
    if form.get("password"):
        fields["password"] = form["password"]
    try:
        saved = await update_user(gateway, username, UserPatch.model_validate(fields), by=user)
    except ValidationError as error:
        flash(request, _validation_message(error), kind="error")
        return _back(back)
    except AdminError as error:
        flash(request, error.message, kind="error")
        return _back(back)
    flash(request, f"Saved user “{saved.username}”.")
    return _back("/admin/users")
