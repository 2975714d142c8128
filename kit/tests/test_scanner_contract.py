"""The MalwareScanner contract, pinned once and run against both adapters.

`TestNoScanner` runs everywhere (it passes everything); `TestClamdScanner` runs against a real
clamd started by the root conftest's `clamd` fixture (marker `engines`), over its Unix socket
and over TCP. What needs a clamd of its own (a small StreamMaxLength, one to kill) is started
here with `testkit.clamd.start_clamd`; clamd with a one-signature database starts in ~0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kit.ports import MalwareScanner, NoScanner, ScanFailed, ScanVerdict, Unavailable
from kit.scanner_clamd import ClamdScanner, parse_address
from testkit.clamd import EICAR, EICAR_SIGNATURE, ClamdEngine, eicar_signatures, start_clamd
from testkit.engines import _free_ports

MiB = 1 << 20


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def scan(scanner: MalwareScanner, *chunks: bytes) -> ScanVerdict:
    async with scanner.stream() as stream:
        for chunk in chunks:
            await stream.feed(chunk)
        return await stream.verdict()


class MalwareScannerContract:
    """What every scanner does with bytes it finds nothing in, and with its streams."""

    async def test_a_clean_stream_is_not_infected(self, scanner: MalwareScanner) -> None:
        verdict = await scan(scanner, b"a harmless fundus photo, honestly")
        assert verdict == ScanVerdict(infected=False, signature=None)

    async def test_an_empty_stream_is_not_infected(self, scanner: MalwareScanner) -> None:
        assert await scan(scanner) == ScanVerdict(infected=False)

    async def test_empty_chunks_in_the_stream_are_harmless(self, scanner: MalwareScanner) -> None:
        verdict = await scan(scanner, b"", b"some bytes", b"", b"more bytes", b"")
        assert verdict.infected is False

    async def test_megabytes_of_random_bytes_in_many_chunks_are_clean(
        self, scanner: MalwareScanner
    ) -> None:
        verdict = await scan(scanner, *split(os.urandom(6 * MiB), 100_000))
        assert verdict.infected is False

    async def test_asking_twice_gives_the_same_verdict(self, scanner: MalwareScanner) -> None:
        async with scanner.stream() as stream:
            await stream.feed(b"hello")
            first = await stream.verdict()
            assert await stream.verdict() == first

    async def test_an_exception_inside_the_stream_propagates_and_the_scanner_goes_on(
        self, scanner: MalwareScanner
    ) -> None:
        with pytest.raises(RuntimeError, match="upload broke"):
            async with scanner.stream() as stream:
                await stream.feed(b"the first part of an upload")
                raise RuntimeError("upload broke")
        assert (await scan(scanner, b"the next upload")).infected is False

    async def test_a_cancelled_scan_leaves_the_scanner_usable(
        self, scanner: MalwareScanner
    ) -> None:
        started = asyncio.Event()

        async def stalled() -> None:
            async with scanner.stream() as stream:
                await stream.feed(b"part")
                started.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(stalled())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await scan(scanner, b"after")).infected is False

    async def test_scans_in_parallel_each_get_their_own_verdict(
        self, scanner: MalwareScanner
    ) -> None:
        verdicts = await asyncio.gather(*(scan(scanner, b"x" * n, b"y") for n in range(8)))
        assert [v.infected for v in verdicts] == [False] * 8


class TestNoScanner(MalwareScannerContract):
    @pytest.fixture
    async def scanner(self) -> AsyncIterator[MalwareScanner]:
        scanner = NoScanner()
        yield scanner
        await scanner.close()

    async def test_every_stream_passes_even_the_eicar_test_string(
        self, scanner: MalwareScanner
    ) -> None:
        assert await scan(scanner, EICAR) == ScanVerdict(infected=False)


@pytest.fixture(scope="module")
def small_clamd(
    clamd: ClamdEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClamdEngine]:
    """A second clamd that refuses streams over 1 MiB (`clamd` first: it skips or fails the
    test when clamd is not installed)."""
    engine = start_clamd(
        tmp_path_factory.mktemp("small-clamd"), eicar_signatures(), stream_max_length=MiB
    )
    yield engine
    engine.stop()


@pytest.fixture
def own_clamd(clamd: ClamdEngine, tmp_path: Path) -> Iterator[ClamdEngine]:
    """A clamd for one test, to be killed and restarted."""
    engine = start_clamd(tmp_path, eicar_signatures())
    yield engine
    engine.stop()


@contextlib.asynccontextmanager
async def silent_server(path: Path) -> AsyncIterator[asyncio.Event]:
    """A Unix socket server that reads everything and never answers; the event is set when a
    client hangs up."""
    hung_up = asyncio.Event()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while await reader.read(65536):
                pass
            hung_up.set()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(handle, path=str(path))
    try:
        yield hung_up
    finally:
        server.close()
        await server.wait_closed()
        # The client has hung up by now; let each handler see it and close its end.
        await asyncio.wait_for(asyncio.gather(*handlers), 5)


@pytest.mark.engines
class TestClamdScanner(MalwareScannerContract):
    @pytest.fixture(params=["unix", "tcp"])
    async def scanner(
        self, request: pytest.FixtureRequest, clamd: ClamdEngine
    ) -> AsyncIterator[ClamdScanner]:
        address = clamd.address if request.param == "unix" else clamd.tcp_address
        scanner = ClamdScanner(address=address, timeout=30)
        yield scanner
        await scanner.close()

    async def test_the_eicar_string_is_found_with_its_signature_name(
        self, scanner: ClamdScanner
    ) -> None:
        verdict = await scan(scanner, EICAR)
        assert verdict.infected is True
        # clamd appends ".UNOFFICIAL" to signatures from a database ClamAV did not sign.
        assert verdict.signature in (EICAR_SIGNATURE, f"{EICAR_SIGNATURE}.UNOFFICIAL")

    async def test_the_eicar_string_split_over_many_small_chunks_is_found(
        self, scanner: ClamdScanner
    ) -> None:
        data = b"header bytes " + EICAR + b" trailer"
        for size in (1, 3, 7):
            verdict = await scan(scanner, *split(data, size))
            assert verdict.infected, f"not found in chunks of {size} bytes"
            assert verdict.signature is not None and EICAR_SIGNATURE in verdict.signature

    async def test_the_eicar_string_after_5_mb_of_other_bytes_is_found(
        self, scanner: ClamdScanner
    ) -> None:
        filler = os.urandom(5_000_000)
        assert (await scan(scanner, *split(filler, 65536), EICAR)).infected
        assert (await scan(scanner, filler + EICAR)).infected  # one 5 MB chunk, split by us

    async def test_the_eicar_string_across_the_split_of_a_big_chunk_is_found(
        self, scanner: ClamdScanner
    ) -> None:
        # 256 KiB pieces: the test string starts 10 bytes before the end of the first one.
        data = bytes(256 * 1024 - 10) + EICAR + bytes(1000)
        assert (await scan(scanner, data)).infected

    async def test_an_infected_and_a_clean_scan_interleaved_each_get_their_verdict(
        self, scanner: ClamdScanner
    ) -> None:
        async with scanner.stream() as infected, scanner.stream() as clean:
            for a, b in zip(split(EICAR, 5), split(b"z" * len(EICAR), 5), strict=True):
                await infected.feed(a)
                await clean.feed(b)
            got_clean, got_infected = await asyncio.gather(clean.verdict(), infected.verdict())
        assert got_infected.infected and not got_clean.infected

    async def test_twenty_scans_in_parallel_all_answer_correctly(
        self, scanner: ClamdScanner
    ) -> None:
        # More than clamd's 10 worker threads: the others queue, none is lost.
        payloads = [EICAR if n % 2 else os.urandom(50_000) for n in range(20)]
        verdicts = await asyncio.gather(*(scan(scanner, *split(p, 4096)) for p in payloads))
        assert [v.infected for v in verdicts] == [n % 2 == 1 for n in range(20)]

    async def test_abandoned_streams_give_clamd_its_threads_back(
        self, scanner: ClamdScanner
    ) -> None:
        # 30 abandoned streams on clamd's 10 threads: were one kept, a later scan would wait
        # for clamd's 120 s read timeout.
        for n in range(30):
            with pytest.raises(RuntimeError):
                async with scanner.stream() as stream:
                    await stream.feed(b"partial upload %d" % n)
                    raise RuntimeError("client went away")
        started = time.monotonic()
        assert (await scan(scanner, EICAR)).infected
        assert time.monotonic() - started < 5

    async def test_a_stream_over_stream_max_length_raises_scan_failed(
        self, small_clamd: ClamdEngine
    ) -> None:
        for address in (small_clamd.address, small_clamd.tcp_address):
            scanner = ClamdScanner(address=address, timeout=30)
            with pytest.raises(ScanFailed, match="size limit exceeded"):
                await scan(scanner, *split(bytes(3 * MiB), 4096))
            with pytest.raises(ScanFailed, match="size limit exceeded"):
                await scan(scanner, bytes(3 * MiB))
            # Up to the limit is still scanned.
            assert (await scan(scanner, bytes(MiB - len(EICAR)), EICAR)).infected

    async def test_feeding_after_a_refusal_is_an_error_not_a_silent_pass(
        self, small_clamd: ClamdEngine
    ) -> None:
        scanner = ClamdScanner(address=small_clamd.address, timeout=30)
        async with scanner.stream() as stream:
            with pytest.raises(ScanFailed):
                for chunk in split(bytes(3 * MiB), 65536):
                    await stream.feed(chunk)
                await stream.verdict()
            with pytest.raises(RuntimeError):
                await stream.feed(b"more")

    async def test_a_missing_socket_raises_unavailable(self, tmp_path: Path) -> None:
        scanner = ClamdScanner(address=f"unix:{tmp_path / 'no-such.sock'}", timeout=5)
        with pytest.raises(Unavailable, match="cannot be reached"):
            await scan(scanner, b"bytes")

    async def test_a_refused_tcp_port_raises_unavailable(self) -> None:
        (port,) = _free_ports(1)
        scanner = ClamdScanner(address=f"tcp:127.0.0.1:{port}", timeout=5)
        with pytest.raises(Unavailable, match="cannot be reached"):
            await scan(scanner, b"bytes")

    async def test_a_scanner_that_never_answers_raises_unavailable_after_the_timeout(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "silent.sock"
        async with silent_server(path):
            scanner = ClamdScanner(address=f"unix:{path}", timeout=0.5)
            started = time.monotonic()
            with pytest.raises(Unavailable, match="no verdict"):
                await scan(scanner, b"bytes")
            assert time.monotonic() - started < 3

    async def test_an_abandoned_stream_closes_its_connection(self, tmp_path: Path) -> None:
        path = tmp_path / "silent.sock"
        async with silent_server(path) as hung_up:
            scanner = ClamdScanner(address=f"unix:{path}", timeout=5)
            with pytest.raises(RuntimeError):
                async with scanner.stream() as stream:
                    await stream.feed(b"partial")
                    raise RuntimeError("client went away")
            await asyncio.wait_for(hung_up.wait(), 5)

    async def test_a_clamd_killed_mid_stream_raises_unavailable_and_is_scanned_after_restart(
        self, own_clamd: ClamdEngine
    ) -> None:
        scanner = ClamdScanner(address=own_clamd.address, timeout=10)
        with pytest.raises(Unavailable):
            async with scanner.stream() as stream:
                await stream.feed(b"first half")
                own_clamd.kill()
                for chunk in split(bytes(2 * MiB), 65536):
                    await stream.feed(chunk)
                await stream.verdict()
        with pytest.raises(Unavailable):
            await scan(scanner, b"while it is down")
        own_clamd.restart()  # from this thread: the engine dies with the thread that starts it
        assert (await scan(scanner, EICAR)).infected


@pytest.mark.parametrize(
    "address",
    ["", "clamd.sock", "unix:", "tcp:localhost", "tcp:host:port", "tcp::3310", "http://x"],
)
def test_an_address_that_is_not_unix_or_tcp_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="clamd address"):
        ClamdScanner(address=address)


def test_addresses_are_parsed_into_their_parts() -> None:
    assert parse_address("unix:/run/clamav/clamd.ctl") == ("unix", "/run/clamav/clamd.ctl", 0)
    assert parse_address("tcp:127.0.0.1:3310") == ("tcp", "127.0.0.1", 3310)
    assert parse_address("tcp:[::1]:3310") == ("tcp", "::1", 3310)
