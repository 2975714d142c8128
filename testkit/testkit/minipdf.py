"""A minimal PDF writer for test fixtures: A4 pages of placed images, filled rectangles and
base-14 Helvetica text, with a correct cross-reference table and a /Producer.

Coordinates are PDF points measured from the page's TOP-left corner (as pdfplumber reports
them); the writer turns them into PDF's bottom-left user space. Items are painted in order,
so a later item lies over an earlier one (a badge over a tile, text over a banner).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image

__all__ = ["A4", "PdfImage", "PdfItem", "PdfPage", "PdfRect", "PdfText", "write_pdf"]

A4 = (595.28, 841.89)
Colour = tuple[float, float, float]  # RGB, each 0-1


@dataclass(frozen=True, kw_only=True)
class PdfImage:
    """An image XObject drawn into the box `x, top, width, height` (points)."""

    x: float
    top: float
    width: float
    height: float
    data: bytes  # JPEG bytes ("jpeg") or raw 8-bit RGB rows ("rgb", Flate-compressed)
    pixels: tuple[int, int]
    encoding: Literal["jpeg", "rgb"] = "jpeg"

    @classmethod
    def jpeg(cls, data: bytes, *, x: float, top: float, width: float, height: float) -> PdfImage:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
        return cls(x=x, top=top, width=width, height=height, data=data, pixels=size)

    @classmethod
    def rgb(
        cls, image: Image.Image, *, x: float, top: float, width: float, height: float
    ) -> PdfImage:
        rgb = image.convert("RGB")
        return cls(
            x=x,
            top=top,
            width=width,
            height=height,
            data=rgb.tobytes(),
            pixels=rgb.size,
            encoding="rgb",
        )


@dataclass(frozen=True, kw_only=True)
class PdfRect:
    x: float
    top: float
    width: float
    height: float
    fill: Colour


@dataclass(frozen=True, kw_only=True)
class PdfText:
    """One run of text; `baseline` is the distance of its baseline from the page's top."""

    x: float
    baseline: float
    text: str
    size: float = 10.0
    bold: bool = False
    colour: Colour = (0.0, 0.0, 0.0)


PdfItem = PdfImage | PdfRect | PdfText


@dataclass(frozen=True, kw_only=True)
class PdfPage:
    items: Sequence[PdfItem] = ()
    size: tuple[float, float] = A4


def _text_literal(text: str) -> bytes:
    raw = text.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _num(value: float) -> bytes:
    return (b"%.3f" % value).rstrip(b"0").rstrip(b".") or b"0"


def _colour(colour: Colour, op: bytes) -> bytes:
    return b" ".join(_num(c) for c in colour) + b" " + op


def write_pdf(
    pages: Sequence[PdfPage], *, producer: str = "testkit.minipdf", creator: str | None = None
) -> bytes:
    """The PDF file of `pages`."""
    objects: list[bytes] = []  # object n is objects[n - 1]

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(head: bytes, data: bytes) -> bytes:
        return b"<< " + head + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"

    catalog = add(b"")  # filled in once the page tree exists
    tree = add(b"")
    info_parts = b"/Producer " + _text_literal(producer)
    if creator:
        info_parts += b" /Creator " + _text_literal(creator)
    info = add(b"<< " + info_parts + b" >>")
    regular = add(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    bold = add(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>"
    )
    page_ids: list[int] = []
    for page in pages:
        width, height = page.size
        ops: list[bytes] = []
        xobjects: list[bytes] = []
        for item in page.items:
            if isinstance(item, PdfImage):
                if item.encoding == "jpeg":
                    head, data = b"/Filter /DCTDecode", item.data
                else:
                    head, data = b"/Filter /FlateDecode", zlib.compress(item.data)
                image_id = add(
                    stream(
                        b"/Type /XObject /Subtype /Image /Width %d /Height %d "
                        b"/ColorSpace /DeviceRGB /BitsPerComponent 8 " % item.pixels + head,
                        data,
                    )
                )
                name = b"Im%d" % len(xobjects)
                xobjects.append(b"/%s %d 0 R" % (name, image_id))
                bottom = height - item.top - item.height
                matrix = b" ".join(_num(v) for v in (item.width, 0, 0, item.height, item.x, bottom))
                ops.append(b"q " + matrix + b" cm /" + name + b" Do Q")
            elif isinstance(item, PdfRect):
                bottom = height - item.top - item.height
                box = b" ".join(_num(v) for v in (item.x, bottom, item.width, item.height))
                ops.append(b"q " + _colour(item.fill, b"rg") + b" " + box + b" re f Q")
            else:
                font = b"/F2" if item.bold else b"/F1"
                ops.append(
                    b"BT "
                    + _colour(item.colour, b"rg")
                    + b" %s %s Tf %s %s Td "
                    % (font, _num(item.size), _num(item.x), _num(height - item.baseline))
                    + _text_literal(item.text)
                    + b" Tj ET"
                )
        content = add(stream(b"", b"\n".join(ops)))
        resources = b"/Font << /F1 %d 0 R /F2 %d 0 R >>" % (regular, bold)
        if xobjects:
            resources += b" /XObject << " + b" ".join(xobjects) + b" >>"
        page_ids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %s %s] /Resources << %s >> "
                b"/Contents %d 0 R >>" % (tree, _num(width), _num(height), resources, content)
            )
        )
    kids = b" ".join(b"%d 0 R" % n for n in page_ids)
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % tree
    objects[tree - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        info,
        xref,
    )
    return bytes(out)
