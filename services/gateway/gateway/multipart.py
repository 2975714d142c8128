"""A streaming multipart/form-data reader: parts are read one at a time straight off the
request, so a file's bytes flow to the object store without being spooled or buffered."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["FormPart", "MalformedForm", "read_parts", "read_text"]


class MalformedForm(ValueError):
    pass


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None  # None for a plain field; "" when a file input was left empty
    content_type: str
    chunks: AsyncIterator[bytes]

    @property
    def is_file(self) -> bool:
        return self.filename is not None


async def read_text(part: FormPart, *, limit: int = 64 * 1024) -> str:
    data = bytearray()
    async for chunk in part.chunks:
        data += chunk
        if len(data) > limit:
            raise MalformedForm(f"form field {part.name!r} is too long")
    return data.decode("utf-8", errors="replace")


async def read_parts(content_type: str, body: AsyncIterator[bytes]) -> AsyncIterator[FormPart]:
    """Yield the form's parts in order. Each part's `chunks` must be consumed (or abandoned)
    before the next part is requested; what is left of an abandoned part is skipped."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise MalformedForm("expected multipart/form-data with a boundary")

    events: deque[tuple[str, Any]] = deque()
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[str, str] = {}

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[header_field.decode("latin-1").lower()] = header_value.decode("utf-8", "replace")
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        events.append(("begin", dict(headers)))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if events and events[-1][0] == "data":  # coalesce into fewer, larger chunks
            events[-1] = ("data", events[-1][1] + data[start:end])
        else:
            events.append(("data", bytes(data[start:end])))

    def on_part_end() -> None:
        events.append(("end", None))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    body_iter = body.__aiter__()
    finished = False

    async def next_event() -> tuple[str, Any] | None:
        nonlocal finished
        while not events:
            if finished:
                return None
            try:
                chunk = await body_iter.__anext__()
            except StopAsyncIteration:
                finished = True
                parser.finalize()
                continue
            if chunk:
                try:
                    parser.write(chunk)
                except Exception as exc:
                    raise MalformedForm(f"malformed multipart body: {exc}") from exc
        return events.popleft()

    part_open = False

    async def part_chunks() -> AsyncIterator[bytes]:
        nonlocal part_open
        while part_open:
            event = await next_event()
            if event is None:
                raise MalformedForm("the request ended in the middle of a file")
            if event[0] == "end":
                part_open = False
                return
            yield event[1]

    while True:
        if part_open:  # the caller abandoned the previous part: skip the rest of it
            async for _ in part_chunks():
                pass
        event = await next_event()
        if event is None:
            return
        if event[0] != "begin":
            continue
        part_headers: dict[str, str] = event[1]
        _, disposition = parse_options_header(part_headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = disposition.get(b"filename")
        filename = None if raw_filename is None else raw_filename.decode("utf-8", "replace")
        part_open = True
        yield FormPart(
            name=name,
            filename=filename,
            content_type=part_headers.get("content-type", "application/octet-stream"),
            chunks=part_chunks(),
        )
