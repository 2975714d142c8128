"""Synthetic test data: fundus photos, non-fundus photos, PDFs and oversized files.

Everything here is drawn by code from a seed, never taken from a patient. The fundus photos are
plausible enough to exercise the anonymizer (a bright field of view on a black surround, an optic
disc, branching vessels, sensor noise) and can carry the two kinds of PHI it must remove: text
burned into the pixels outside the field of view, and a name in the EXIF, XMP, IPTC and JPEG
comment metadata.

Geometry of `fundus_image` (tests rely on it): the field of view is a circle centred on the image,
centre ``(width / 2, height / 2)`` in pixel-edge coordinates, radius
``disc_fraction * min(width, height) / 2``; the optic disc sits on the right of the centre (a
right eye) in the upright picture; the burned-in text sits in `text_corner`, clear of the circle.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont
from PIL.PngImagePlugin import PngInfo

__all__ = [
    "DEFAULT_BURNED_IN_TEXT",
    "Corner",
    "field_of_view_geometry",
    "fundus_image",
    "jpeg_segments",
    "large_jpeg_like",
    "no_disc_image",
    "pdf_bytes",
    "png_fundus",
]

DEFAULT_BURNED_IN_TEXT = "PATIENT: JANE DOE  MRN 12345  DOB 1970-01-01"

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
ImageFormat = Literal["JPEG", "PNG"]

# The vessel tree, colours and vignetting are drawn at most this many pixels across and then
# upscaled: a photo's low-frequency content does not need full resolution, and it keeps one
# 2866 x 2866 image well under a second.
_WORK_SIDE = 1024
_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)
# EXIF tags (TIFF tag numbers) written when a name is embedded.
_IMAGE_DESCRIPTION = 0x010E
_ORIENTATION = 0x0112
_ARTIST = 0x013B
_EXIF_IFD = 0x8769
_DATE_TIME_ORIGINAL = 0x9003
_USER_COMMENT = 0x9286
# How each EXIF orientation is undone by a viewer (the same table as ImageOps.exif_transpose);
# the generator stores the inverse so that the picture *displays* upright.
_STORED_FOR_ORIENTATION: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

FloatArray = NDArray[np.float32]


def field_of_view_geometry(
    size: int | tuple[int, int], disc_fraction: float
) -> tuple[float, float, float]:
    """The field of view `fundus_image` draws for these arguments: ``(centre_x, centre_y, r)``."""
    width, height = _dimensions(size)
    return width / 2, height / 2, disc_fraction * min(width, height) / 2


def fundus_image(
    *,
    size: int | tuple[int, int] = 2866,
    seed: int = 0,
    disc_fraction: float = 0.9,
    burned_in_text: str | None = DEFAULT_BURNED_IN_TEXT,
    exif_name: str | None = None,
    fmt: ImageFormat = "JPEG",
    orientation: int | None = None,
    quality: int = 90,
    text_corner: Corner = "top-left",
) -> bytes:
    """A plausible retinal fundus photo, encoded as `fmt`.

    `size` is the side of a square image or ``(width, height)``. `burned_in_text` is drawn in
    large white letters in `text_corner`, outside the field of view; two or more spaces (or a
    newline) start a new line. `exif_name` puts that name in EXIF (Artist, ImageDescription,
    UserComment), an XMP packet (dc:creator), an IPTC block (JPEG APP13) and a JPEG comment
    (PNG: tEXt/iTXt chunks instead of the last two). `orientation` (1-8) is written as the EXIF
    orientation and the pixels are stored so that a viewer honouring it shows the upright picture.
    """
    if fmt not in ("JPEG", "PNG"):
        raise ValueError(f"unsupported format {fmt!r}; use 'JPEG' or 'PNG'")
    if orientation is not None and orientation not in _STORED_FOR_ORIENTATION:
        raise ValueError(f"EXIF orientation must be 1-8, not {orientation}")
    width, height = _dimensions(size)
    rng = np.random.default_rng(seed)
    centre_x, centre_y, radius = field_of_view_geometry((width, height), disc_fraction)

    image = _draw_fundus(width, height, centre_x, centre_y, radius, rng)
    if burned_in_text:
        _burn_in_text(image, burned_in_text, corner=text_corner, fov=(centre_x, centre_y, radius))
    image = _add_sensor_noise(image, rng, amplitude=3)

    stored_as = _STORED_FOR_ORIENTATION.get(orientation or 1)
    if stored_as is not None:
        image = image.transpose(stored_as)
    return _encode(
        image, fmt=fmt, quality=quality, name=exif_name, orientation=orientation, seed=seed
    )


def png_fundus(
    *,
    size: int | tuple[int, int] = 1024,
    seed: int = 0,
    disc_fraction: float = 0.9,
    burned_in_text: str | None = DEFAULT_BURNED_IN_TEXT,
    exif_name: str | None = None,
    orientation: int | None = None,
    text_corner: Corner = "top-left",
) -> bytes:
    """`fundus_image` as a PNG (smaller by default: a noisy 2866 px PNG is ~20 MB)."""
    return fundus_image(
        size=size,
        seed=seed,
        disc_fraction=disc_fraction,
        burned_in_text=burned_in_text,
        exif_name=exif_name,
        fmt="PNG",
        orientation=orientation,
        text_corner=text_corner,
    )


def no_disc_image(
    *,
    size: int | tuple[int, int] = (2000, 1500),
    seed: int = 0,
    text_lines: Sequence[str] = ("SCREENING CAMP REGISTER", "PAGE 3 OF 7"),
    fmt: ImageFormat = "JPEG",
    quality: int = 90,
) -> bytes:
    """A photo of a sheet of paper: lit unevenly but brightly edge to edge, no dark surround."""
    width, height = _dimensions(size)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    tilt = rng.uniform(-0.25, 0.25, size=2).astype(np.float32)
    light = 0.85 + tilt[0] * (xs / width - 0.5) + tilt[1] * (ys / height - 0.5)
    paper = np.array([236.0, 230.0, 214.0], dtype=np.float32)
    pixels = np.clip(light[..., None] * paper, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    font = _font(max(12, height // 24))
    line_height = int(height / 24 * 1.6)
    top = height // 8
    for index, line in enumerate(text_lines):
        draw.text((width // 10, top + index * line_height), line, fill=(30, 30, 40), font=font)
    for index in range(len(text_lines) + 1, 14):  # ruled lines of the form
        y = top + index * line_height
        if y < height - height // 10:
            draw.line([(width // 10, y), (width - width // 10, y)], fill=(120, 120, 150), width=3)
    image = _add_sensor_noise(image, rng, amplitude=3)
    return _encode(image, fmt=fmt, quality=quality, name=None, orientation=None, seed=seed)


def pdf_bytes(
    text_lines: Sequence[str],
    *,
    page_size: tuple[int, int] = (1240, 1754),
    font_size: int = 36,
    resolution: float = 150.0,
) -> bytes:
    """A one-page PDF whose page is a picture of `text_lines` (a scan: no text layer)."""
    page = Image.new("L", page_size, 255)
    draw = ImageDraw.Draw(page)
    font = _font(font_size)
    margin = page_size[0] // 12
    for index, line in enumerate(text_lines):
        draw.text((margin, margin + int(index * font_size * 1.6)), line, fill=0, font=font)
    out = io.BytesIO()
    page.save(out, format="PDF", resolution=resolution)
    return out.getvalue()


def large_jpeg_like(path: str | os.PathLike[str], size_bytes: int) -> Path:
    """Write a `size_bytes` file at `path`: a real tiny JPEG, then zero padding, streamed."""
    head = io.BytesIO()
    Image.new("RGB", (16, 16), (180, 60, 30)).save(head, format="JPEG", quality=80)
    header = head.getvalue()
    if size_bytes < len(header):
        raise ValueError(f"size_bytes must be at least {len(header)} (the JPEG header)")
    target = Path(path)
    chunk = bytes(1 << 20)
    with target.open("wb") as out:
        out.write(header)
        remaining = size_bytes - len(header)
        while remaining > 0:
            step = min(remaining, len(chunk))
            out.write(chunk[:step] if step < len(chunk) else chunk)
            remaining -= step
    return target


# --- drawing -----------------------------------------------------------------------------------


def _dimensions(size: int | tuple[int, int]) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int) else size
    if width < 32 or height < 32:
        raise ValueError(f"image must be at least 32 x 32 pixels, not {width} x {height}")
    return width, height


def _draw_fundus(
    width: int,
    height: int,
    centre_x: float,
    centre_y: float,
    radius: float,
    rng: np.random.Generator,
) -> Image.Image:
    """The photo without text or noise: drawn small, in float, then upscaled."""
    scale = max(1.0, max(width, height) / _WORK_SIDE)
    work_w, work_h = max(1, round(width / scale)), max(1, round(height / scale))
    cx, cy, r = centre_x / scale, centre_y / scale, radius / scale
    ys, xs = np.mgrid[0:work_h, 0:work_w].astype(np.float32)
    xs += 0.5
    ys += 0.5
    dx, dy = xs - cx, ys - cy
    rho = np.sqrt(dx * dx + dy * dy) / r  # 0 at the centre, 1 on the field-of-view edge

    # Choroid colour with mottling and radial vignetting (dimmer towards the edge, as a camera
    # sees it).
    base = np.array([214.0, 92.0, 38.0], dtype=np.float32) * rng.uniform(0.9, 1.05)
    mottle = _smooth_noise(work_w, work_h, cells=12, rng=rng) * 0.10
    vignette = 1.0 - 0.5 * np.clip(rho, 0, 1) ** 2.2
    shade = (vignette + mottle)[..., None]
    pixels = base * shade

    # Macula: a darker spot at the centre; optic disc: a bright yellowish oval to its right.
    macula = np.exp(-((dx / (0.16 * r)) ** 2 + (dy / (0.16 * r)) ** 2))
    pixels *= (1.0 - 0.35 * macula)[..., None]
    disc_x = cx + r * rng.uniform(0.36, 0.44)
    disc_y = cy + r * rng.uniform(-0.06, 0.06)
    disc_r = r * rng.uniform(0.085, 0.1)
    odx, ody = (xs - disc_x) / disc_r, (ys - disc_y) / (disc_r * 1.12)
    optic = np.clip(1.6 - np.sqrt(odx * odx + ody * ody), 0, 1) ** 1.5
    optic_colour = np.array([250.0, 214.0, 128.0], dtype=np.float32)
    pixels += (optic_colour - pixels) * (0.9 * optic)[..., None]

    # Vessels: dark red, leaving the optic disc in branching arcades.
    vessels = _vessel_mask(work_w, work_h, (disc_x, disc_y), disc_r, (cx, cy, r), rng)
    darkness = np.asarray(vessels, dtype=np.float32) / 255.0
    pixels *= 1.0 - darkness[..., None] * np.array([0.45, 0.7, 0.7], dtype=np.float32)

    # Field of view: a sharp aperture (anti-aliased over one work pixel) on a black surround.
    aperture = np.clip((1.0 - rho) * r + 0.5, 0, 1)
    pixels *= aperture[..., None]
    small = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if (work_w, work_h) == (width, height):
        return small
    return small.resize((width, height), Image.Resampling.BILINEAR)


def _smooth_noise(width: int, height: int, *, cells: int, rng: np.random.Generator) -> FloatArray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, smoothly upscaled."""
    grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    smooth = Image.fromarray(grid, "L").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float32) / 127.5 - 1.0


def _vessel_mask(
    width: int,
    height: int,
    origin: tuple[float, float],
    disc_r: float,
    fov: tuple[float, float, float],
    rng: np.random.Generator,
) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    fov_x, fov_y, fov_r = fov
    main_width = max(2.0, fov_r * 0.022)
    # Four arcades: superior and inferior temporal (towards the macula, on the left of a right
    # eye's disc) and the two nasal ones.
    headings = [math.pi + 0.55, math.pi - 0.55, 0.5, -0.5]
    stack: list[tuple[float, float, float, float, int]] = []
    for heading in headings:
        heading += rng.uniform(-0.15, 0.15)
        start_x = origin[0] + math.cos(heading) * disc_r * 0.05
        start_y = origin[1] + math.sin(heading) * disc_r * 0.05
        stack.append((start_x, start_y, heading, main_width, 0))
    step = fov_r * 0.035
    segments = 0
    while stack and segments < 4000:
        x, y, heading, vessel_width, depth = stack.pop()
        # Temporal arcades curve around the macula: bend towards the vertical axis of the disc.
        bend = 0.045 if math.sin(heading) > 0 else -0.045
        if math.cos(heading) > 0:
            bend = -bend
        while vessel_width >= 1.0:
            heading += bend * (depth == 0) + rng.normal(0.0, 0.18)
            nx, ny = x + math.cos(heading) * step, y + math.sin(heading) * step
            if math.hypot(nx - fov_x, ny - fov_y) > fov_r * 0.97:
                break
            draw.line([(x, y), (nx, ny)], fill=255, width=max(1, round(vessel_width)))
            segments += 1
            x, y = nx, ny
            vessel_width *= 0.985
            if depth < 4 and rng.random() < 0.09:
                side = 1.0 if rng.random() < 0.5 else -1.0
                branch_heading = heading + side * rng.uniform(0.45, 0.9)
                stack.append((x, y, branch_heading, vessel_width * 0.7, depth + 1))
                vessel_width *= 0.9
    return mask.filter(ImageFilter.GaussianBlur(0.7))


def _burn_in_text(
    image: Image.Image,
    text: str,
    *,
    corner: Corner,
    fov: tuple[float, float, float],
) -> None:
    """Draw `text` in white in `corner`, at the largest size whose block stays clear of `fov`."""
    lines = [line for chunk in text.split("\n") for line in chunk.split("  ") if line.strip()]
    lines = [line.strip() for line in lines]
    width, height = image.size
    centre_x, centre_y, radius = fov
    clearance = radius * 1.04 + 8  # stays outside any small safety margin the anonymizer adds
    edge = max(4, round(min(width, height) * 0.012))
    draw = ImageDraw.Draw(image)
    font_size = max(10, round(min(width, height) * 0.03))
    while True:
        font = _font(font_size)
        spacing = max(2, font_size // 4)
        left, top, right, bottom = draw.multiline_textbbox(
            (0, 0), "\n".join(lines), font=font, spacing=spacing
        )
        block_w, block_h = right - left, bottom - top
        x = edge if corner.endswith("left") else width - edge - block_w
        y = edge if corner.startswith("top") else height - edge - block_h
        # The block's point nearest the circle's centre must lie outside the clearance circle.
        near_x = min(max(centre_x, x), x + block_w)
        near_y = min(max(centre_y, y), y + block_h)
        if math.hypot(near_x - centre_x, near_y - centre_y) > clearance or font_size <= 10:
            break
        font_size = int(font_size * 0.9)
    draw.multiline_text(
        (x - left, y - top), "\n".join(lines), fill=(255, 255, 255), font=font, spacing=spacing
    )


def _add_sensor_noise(
    image: Image.Image, rng: np.random.Generator, *, amplitude: int
) -> Image.Image:
    """Grey noise of +/- `amplitude` levels, added in C (8 M pixels in a few tens of ms)."""
    width, height = image.size
    noise = rng.integers(0, 2 * amplitude + 1, size=(height, width), dtype=np.uint8)
    grey = Image.fromarray(noise, "L")
    return ImageChops.add(image, Image.merge("RGB", (grey, grey, grey)), 1.0, -amplitude)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for candidate in _FONT_CANDIDATES:
        if Path(candidate).is_file():
            return ImageFont.truetype(candidate, size)
    return ImageFont.load_default(size=size)


# --- encoding and metadata ---------------------------------------------------------------------


def _encode(
    image: Image.Image,
    *,
    fmt: ImageFormat,
    quality: int,
    name: str | None,
    orientation: int | None,
    seed: int,
) -> bytes:
    exif = _exif(name, orientation, seed) if (name or orientation) else None
    out = io.BytesIO()
    if fmt == "JPEG":
        params: dict[str, object] = {"quality": quality}
        if exif is not None:
            params["exif"] = exif.tobytes()
        if name:
            params["xmp"] = _xmp_packet(name)
            params["comment"] = f"Patient: {name}".encode()
        image.save(out, format="JPEG", **params)
        data = out.getvalue()
        return _insert_jpeg_segment(data, 0xED, _iptc_block(name)) if name else data
    info = PngInfo()
    if name:
        info.add_text("Author", name)
        info.add_text("Comment", f"Patient: {name}")
        info.add_itxt("XML:com.adobe.xmp", _xmp_packet(name).decode())
    png_params: dict[str, object] = {"pnginfo": info, "compress_level": 1}
    if exif is not None:
        png_params["exif"] = exif.tobytes()
    image.save(out, format="PNG", **png_params)
    return out.getvalue()


def _exif(name: str | None, orientation: int | None, seed: int) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[_ORIENTATION] = orientation
    if name:
        exif[_ARTIST] = name
        exif[_IMAGE_DESCRIPTION] = f"Fundus photograph of {name}"
        details = exif.get_ifd(_EXIF_IFD)
        details[_DATE_TIME_ORIGINAL] = f"2024:03:{1 + seed % 28:02d} 10:21:07"
        details[_USER_COMMENT] = b"ASCII\x00\x00\x00" + f"Patient {name}".encode()
    return exif


def _xmp_packet(name: str) -> bytes:
    who = escape(name)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<dc:creator><rdf:Seq><rdf:li>{who}</rdf:li></rdf:Seq></dc:creator>"
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Fundus photograph of {who}'
        "</rdf:li></rdf:Alt></dc:description>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def _iptc_block(name: str) -> bytes:
    """A Photoshop APP13 payload holding an IPTC record with the name as By-line (2:80)."""
    value = name.encode()[:64]
    iptc = b"\x1c\x02\x50" + struct.pack(">H", len(value)) + value
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc))
    resource += iptc + (b"\x00" if len(iptc) % 2 else b"")
    return b"Photoshop 3.0\x00" + resource


def _insert_jpeg_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """Insert an APPn/COM segment after the existing APP segments (before the tables)."""
    position = 2
    while data[position] == 0xFF and 0xE0 <= data[position + 1] <= 0xEF:
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        position += 2 + length
    segment = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:position] + segment + data[position:]


def jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The (marker, payload) of each JPEG segment before the image data (for inspections)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"malformed JPEG: expected a marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        yield marker, data[position + 4 : position + 2 + length]
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return
        position += 2 + length


def text_pdf_bytes(text_lines: Sequence[str]) -> bytes:
    """A one-page PDF with a real text layer (Helvetica), like a report a camera exports."""

    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 12 Tf", "14 TL", "50 780 Td"]
    for line in text_lines:
        ops.append(f"({escape(line)}) Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
