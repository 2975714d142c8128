"""The HTTP server every process runs (uvicorn), with what uvicorn lacks: a deadline for a
request's headers, so a client trickling bytes cannot hold a connection open forever (the
body has its own idle deadline, in the gateway's app)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["Server", "server"]


class _HeaderDeadline(HttpToolsProtocol):
    """httptools' protocol, closing a connection whose request headers do not arrive whole
    within `header_seconds` of the request's first byte (or of the connection opening)."""

    def __init__(self, *args: Any, header_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_seconds = header_seconds
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_seconds, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: on SIGTERM it re-raises the signal after
    serving, which kills the process before the services are stopped; the composition root
    handles SIGINT and SIGTERM itself and stops uvicorn and the services in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(app: Any, *, host: str, port: int, header_seconds: float) -> Server:
    # uvicorn takes any callable that makes the protocol (it calls it with its own arguments).
    protocol: Any = functools.partial(_HeaderDeadline, header_seconds=header_seconds)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", http=protocol
    )
    return Server(config)
