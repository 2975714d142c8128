"""The gateway's domain errors: each carries the message the user sees and its HTTP status.
Routes raise them; the app's exception handlers turn them into a JSON answer (the API, the
pages' scripts) or a styled page (a browser), in one place."""

from __future__ import annotations

__all__ = ["NO_STORAGE_SPACE", "SERVICE_UNAVAILABLE", "STORAGE_UNAVAILABLE", "GatewayError"]

NO_STORAGE_SPACE = "The server has no storage space left; nothing was kept. Please try again later."
STORAGE_UNAVAILABLE = "Storage is unavailable; nothing was kept. Please try again shortly."
SERVICE_UNAVAILABLE = "The service is temporarily unavailable. Please try again shortly."


class GatewayError(Exception):
    """A refused request, with the message for the user."""

    def __init__(
        self, message: str, *, status_code: int = 400, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.status_code = message, status_code
        self.headers = headers or {}
