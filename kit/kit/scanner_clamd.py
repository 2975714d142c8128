"""The malware-scanner port over ClamAV's clamd: its INSTREAM command on a Unix or TCP socket.

One connection per stream (clamd answers one INSTREAM per connection and holds one of its
`MaxThreads` worker threads for it). The protocol: ``zINSTREAM\\0``, then chunks each prefixed
by its length as a 4-byte big-endian integer, then a zero-length chunk; clamd scans what it
was sent and answers ``stream: OK\\0`` or ``stream: <signature> FOUND\\0``, or a line ending in
``ERROR`` (``INSTREAM size limit exceeded. ERROR`` once the stream passes its
``StreamMaxLength``, 25 MiB by default).

Chunks are sent as they are fed, split into pieces of at most `chunk_size` (256 KiB): clamd
allocates a buffer per chunk it reads, and a chunk longer than its ``StreamMaxLength`` is
refused outright, so a caller's 64 MiB chunk must not go out as one.

clamd may answer (and close) before the stream ends: on the size limit it writes its ERROR
line and hangs up while we are still sending, and our next write fails. The reply is then
still in our socket's receive queue, so we read it there. This is why the adapter drives a
plain non-blocking socket through the loop's ``sock_*`` calls rather than asyncio streams:
a stream transport that fails a write closes itself and its reader drops the bytes it had not
handed out, so the reply was lost (measured: 3 MiB sent in 4 KiB chunks to a clamd limited to
1 MiB, 18 of 30 refusals came back as a bare hang-up over a Unix socket, 30 of 30 over TCP;
with the socket read directly, 240 of 240 are the ERROR line). A hang-up without a reply is
clamd going away mid-scan: `Unavailable`.

Errors: connection refused, a missing socket, a reset, or no answer within `timeout` seconds
(per step: connecting, each write, the verdict after the last chunk) raise `Unavailable`; the
caller retries later and never takes the bytes for clean. A clamd ERROR reply raises
`ScanFailed` (the stream cannot be scanned as it is), except errors of clamd's own resources
(its temporary files, memory, a read that timed out, accept/poll), which are `Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from kit.ports import ScanFailed, ScanStream, ScanVerdict, Unavailable

__all__ = ["CHUNK_SIZE", "ClamdScanner", "parse_address"]

CHUNK_SIZE = 256 * 1024
_END = struct.pack(">I", 0)
# A reply is one short line; anything longer is not clamd.
_REPLY_LIMIT = 64 * 1024
# ERROR replies about clamd's own state, not about the bytes: worth trying again later.
_TRANSIENT_ERRORS = (
    "read timeout",
    "read poll",
    "accept",
    "temporary file",
    "cli_gentempfd",
    "can't allocate memory",
)


@dataclass(frozen=True)
class _Address:
    kind: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_address(address: str) -> tuple[str, str, int]:
    """``"unix:/run/clamd.sock"`` → ``("unix", path, 0)``; ``"tcp:host:3310"`` → ``("tcp",
    host, 3310)`` (an IPv6 host in brackets: ``"tcp:[::1]:3310"``). Raises ValueError."""
    kind, sep, rest = address.partition(":")
    if sep and kind == "unix" and rest:
        return "unix", rest, 0
    if sep and kind == "tcp":
        host, colon, port = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if colon and host and port.isdigit() and 0 < int(port) < 65536:
            return "tcp", host, int(port)
    raise ValueError(
        f"clamd address must be 'unix:/path/to/clamd.sock' or 'tcp:HOST:PORT', not {address!r}"
    )


class ClamdScanner:
    """`MalwareScanner` over clamd at `address` (``unix:PATH`` or ``tcp:HOST:PORT``)."""

    def __init__(self, *, address: str, timeout: float = 60.0, chunk_size: int = CHUNK_SIZE):
        kind, where, port = parse_address(address)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._address = (
            _Address(kind, path=where) if kind == "unix" else _Address(kind, host=where, port=port)
        )
        self._timeout, self._chunk_size = timeout, chunk_size

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[ScanStream]:
        """A new connection to clamd with INSTREAM begun; closed on leaving, however left
        (an abandoned stream is simply dropped: clamd scans nothing and frees its thread)."""
        sock = await self._connect()
        scan = _ClamdStream(
            sock, where=str(self._address), timeout=self._timeout, chunk=self._chunk_size
        )
        try:
            await scan.begin()
            yield scan
        finally:
            scan.close()

    async def close(self) -> None:
        return None  # nothing is kept between streams

    async def _connect(self) -> socket.socket:
        address = self._address
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                if address.kind == "unix":
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    target: str | tuple[Any, ...] = address.path
                else:
                    infos = await loop.getaddrinfo(
                        address.host, address.port, type=socket.SOCK_STREAM
                    )
                    family, kind, proto, _, target = infos[0]
                    sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, target)
                except BaseException:
                    sock.close()
                    raise
                return sock
        except TimeoutError as exc:
            raise Unavailable(
                f"clamd at {address} did not accept a connection within {self._timeout:g}s"
            ) from exc
        except OSError as exc:  # refused, no such socket, unreachable, permission
            raise Unavailable(f"clamd at {address} cannot be reached: {exc}") from exc


class _ClamdStream:
    def __init__(self, sock: socket.socket, *, where: str, timeout: float, chunk: int) -> None:
        self._sock, self._loop = sock, asyncio.get_running_loop()
        self._where, self._timeout, self._chunk = where, timeout, chunk
        self._verdict: ScanVerdict | None = None
        self._ended = False

    async def begin(self) -> None:
        await self._send(b"zINSTREAM\0")

    async def feed(self, chunk: bytes) -> None:
        if self._ended:
            raise RuntimeError("feed() after the stream ended (verdict given or scan failed)")
        view = memoryview(chunk)
        for start in range(0, len(view), self._chunk):
            piece = view[start : start + self._chunk]
            await self._send(struct.pack(">I", len(piece)), piece)

    async def verdict(self) -> ScanVerdict:
        if self._verdict is not None:
            return self._verdict
        if self._ended:
            raise RuntimeError("verdict() after a failed stream")
        await self._send(_END)
        self._ended = True
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._read_reply()
        except TimeoutError as exc:
            raise Unavailable(
                f"clamd at {self._where} gave no verdict within {self._timeout:g}s"
            ) from exc
        except OSError as exc:
            raise Unavailable(f"clamd at {self._where} hung up mid-scan: {exc}") from exc
        self._verdict = self._parse(reply)
        return self._verdict

    def close(self) -> None:
        self._ended = True
        self._sock.close()

    async def _read_reply(self) -> bytes:
        """The reply line without its NUL, or what came before the connection ended."""
        reply = bytearray()
        while b"\0" not in reply and len(reply) < _REPLY_LIMIT:
            data = await self._loop.sock_recv(self._sock, 4096)
            if not data:
                break
            reply += data
        return bytes(reply.partition(b"\0")[0])

    async def _send(self, *parts: bytes | memoryview) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                for part in parts:
                    await self._loop.sock_sendall(self._sock, part)
        except TimeoutError as exc:
            self._ended = True
            raise Unavailable(
                f"clamd at {self._where} took no data for {self._timeout:g}s"
            ) from exc
        except OSError as exc:  # broken pipe, reset: clamd hung up, perhaps after a reply
            self._ended = True
            reply = b""
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(min(self._timeout, 5.0)):
                    reply = await self._read_reply()
            if not reply:
                raise Unavailable(f"clamd at {self._where} hung up mid-stream: {exc}") from exc
            raise self._refusal(reply) from exc

    def _refusal(self, reply: bytes) -> ScanFailed | Unavailable:
        """The error for a reply that came before the stream ended."""
        try:
            verdict = self._parse(reply)
        except (ScanFailed, Unavailable) as error:
            return error
        return ScanFailed(f"clamd at {self._where} answered before the stream ended: {verdict}")

    def _parse(self, reply: bytes) -> ScanVerdict:
        text = reply.decode("utf-8", "replace").strip()
        if not text:
            raise Unavailable(f"clamd at {self._where} hung up without a verdict")
        if text.endswith("ERROR"):
            reason = f"clamd at {self._where}: {text}"
            if any(mark in text.lower() for mark in _TRANSIENT_ERRORS):
                raise Unavailable(reason)
            raise ScanFailed(reason)
        result = text.removeprefix("stream:").strip()
        if result == "OK":
            return ScanVerdict(infected=False)
        if result.endswith(" FOUND") and len(result) > len(" FOUND"):
            return ScanVerdict(infected=True, signature=result.removesuffix(" FOUND").strip())
        raise ScanFailed(f"clamd at {self._where} answered {text!r}, not a verdict")
