"""Reading the small forms of the pages (sign-in, administration) with hard limits: a hostile
post with thousands of fields or huge values is refused with a 400, not held in memory."""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.datastructures import FormData

from gateway.errors import GatewayError

__all__ = ["FORM_TOO_LARGE", "small_form"]

FORM_TOO_LARGE = "The form is too large: too many fields, or a field is too long."
MAX_FIELDS = 100
MAX_FIELD_BYTES = 16 * 1024


async def small_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except HTTPException:
        raise GatewayError(FORM_TOO_LARGE, status_code=400) from None
