"""A streaming multipart/form-data reader: parts are read one at a time straight off the
request, so a file's bytes flow to the object store without being spooled or buffered.

Part headers are read as the browsers send them (RFC 7578): UTF-8 file names raw inside the
quotes (Devanagari, CJK, emoji...), or RFC 5987's ``filename*=UTF-8''...``, which wins when
both are there. Anything that is not a well-formed form is a `MalformedForm` (400), never a
server error."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import GatewayError

__all__ = ["FormPart", "MalformedForm", "disposition", "read_parts", "read_text"]

# RFC 2046: a boundary is 1 to 70 characters.
MAX_BOUNDARY = 70
MAX_PART_HEADER_BYTES = 8 * 1024
_PARAMETER = re.compile(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*(?:;|$)')


class MalformedForm(GatewayError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # an old client's Latin-1
        return raw.decode("latin-1")


def disposition(value: str) -> dict[str, str]:
    """The parameters of a Content-Disposition header (``form-data; name="x"; ...``)."""
    _, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAMETER.finditer(rest):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
    extended = params.pop("filename*", None)
    if extended is not None:  # charset'language'percent-encoded (RFC 5987)
        charset, _, encoded = extended.partition("'")
        _, _, encoded = encoded.partition("'")
        try:
            params["filename"] = unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            params["filename"] = unquote(encoded, encoding="latin-1")
    return params


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
    return _text(bytes(data))


async def read_parts(content_type: str, body: AsyncIterator[bytes]) -> AsyncIterator[FormPart]:
    """Yield the form's parts in order. Each part's `chunks` must be consumed (or abandoned)
    before the next part is requested; what is left of an abandoned part is skipped."""
    try:
        kind, options = parse_options_header(content_type)
    except (UnicodeError, ValueError):
        raise MalformedForm("expected multipart/form-data with a boundary") from None
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise MalformedForm("expected multipart/form-data with a boundary")
    if len(boundary) > MAX_BOUNDARY:
        raise MalformedForm(f"the form's boundary is longer than {MAX_BOUNDARY} characters")

    events: deque[tuple[str, Any]] = deque()
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[str, str] = {}

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])
        if len(header_field) > MAX_PART_HEADER_BYTES:
            raise MalformedForm("a part of the form has too large a header")

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])
        if len(header_value) > MAX_PART_HEADER_BYTES:
            raise MalformedForm("a part of the form has too large a header")

    def on_header_end() -> None:
        headers[header_field.decode("latin-1").lower()] = _text(bytes(header_value))
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
                except MalformedForm:
                    raise
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
        params = disposition(part_headers.get("content-disposition", ""))
        name = params.get("name", "")
        filename = params.get("filename")
        part_open = True
        yield FormPart(
            name=name,
            filename=filename,
            content_type=part_headers.get("content-type", "application/octet-stream"),
            chunks=part_chunks(),
        )
