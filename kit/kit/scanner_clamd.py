"""The malware-scanner port over ClamAV's clamd (INSTREAM on its socket). To be written."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from kit.ports import ScanStream

__all__ = ["ClamdScanner"]


class ClamdScanner:
    def __init__(self, *, address: str, timeout: float = 60.0) -> None:
        self._address, self._timeout = address, timeout

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[ScanStream]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def close(self) -> None:
        return None
