"""The anonymizer's image work: metadata gone, burned-in text gone, the retina untouched."""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytesseract
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageOps

from anonymizer.fundus import (
    NO_FIELD_OF_VIEW,
    CleanImage,
    UnreadableImage,
    anonymize_fundus,
    detect_field_of_view,
)
from testkit.synthetic import (
    field_of_view_geometry,
    fundus_image,
    jpeg_segments,
    no_disc_image,
    png_fundus,
)

NAME = "JANE DOE"
SIZE = 1433  # half a Remidio frame: the same picture, four times fewer pixels to OCR
# Metadata-bearing JPEG segments: APP1 (EXIF, XMP) to APP15 (APP13 is Photoshop/IPTC), COM.
METADATA_MARKERS = {*range(0xE1, 0xF0), 0xFE}
PIXEL_INFO_KEYS = {"exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "photoshop", "comment"}

Pixels = NDArray[np.int16]


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def pixels(data: bytes) -> Pixels:
    return np.asarray(decode(data), dtype=np.int16)


def distance_map(width: int, height: int, centre_x: float, centre_y: float) -> NDArray[np.float64]:
    ys, xs = np.ogrid[0:height, 0:width]
    return np.asarray(np.hypot(xs + 0.5 - centre_x, ys + 0.5 - centre_y), dtype=np.float64)


def ocr(data: bytes) -> str:
    return str(pytesseract.image_to_string(decode(data)))


@pytest.fixture(scope="module")
def raw_jpeg() -> bytes:
    return fundus_image(size=SIZE, seed=7, exif_name=NAME)


@pytest.fixture(scope="module")
def clean_jpeg(raw_jpeg: bytes) -> CleanImage:
    return anonymize_fundus(raw_jpeg)


# --- metadata ----------------------------------------------------------------------------------


def test_raw_fixture_carries_the_name_in_every_metadata_block(raw_jpeg: bytes) -> None:
    markers = [marker for marker, _ in jpeg_segments(raw_jpeg)]
    assert {0xE1, 0xED, 0xFE} <= set(markers)  # EXIF + XMP, Photoshop/IPTC, comment
    assert NAME.encode() in raw_jpeg


def test_clean_jpeg_has_no_metadata_segments(clean_jpeg: CleanImage) -> None:
    for data in (clean_jpeg.image, clean_jpeg.thumbnail):
        segments = list(jpeg_segments(data))
        assert not {marker for marker, _ in segments} & METADATA_MARKERS
        app0 = [payload for marker, payload in segments if marker == 0xE0]
        assert all(payload.startswith(b"JFIF\x00") for payload in app0)
        assert NAME.encode() not in data


def test_clean_jpeg_shows_no_metadata_to_pillow(clean_jpeg: CleanImage) -> None:
    for data in (clean_jpeg.image, clean_jpeg.thumbnail):
        with Image.open(io.BytesIO(data)) as image:
            assert not set(image.info) & PIXEL_INFO_KEYS
            assert dict(image.getexif()) == {}
            assert image.format == "JPEG"


def test_clean_png_has_only_image_chunks() -> None:
    raw = png_fundus(size=600, seed=2, exif_name=NAME)
    assert NAME.encode() in raw
    clean = anonymize_fundus(raw, output_format="auto")
    assert clean.content_type == "image/png"
    chunk_types = []
    position = 8
    while position < len(clean.image):
        (length,) = struct.unpack(">I", clean.image[position : position + 4])
        chunk_types.append(clean.image[position + 4 : position + 8])
        position += 12 + length
    assert set(chunk_types) <= {b"IHDR", b"IDAT", b"IEND"}
    assert NAME.encode() not in clean.image


# --- burned-in text ----------------------------------------------------------------------------


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_burned_in_name_is_readable_before_and_gone_after(corner: str) -> None:
    raw = fundus_image(size=SIZE, seed=11, text_corner=corner)  # type: ignore[arg-type]
    assert NAME in ocr(raw)  # the check below can fail

    clean = anonymize_fundus(raw)

    assert clean.masked
    assert re.findall(r"[A-Za-z0-9]", ocr(clean.image)) == []


def test_burned_in_text_is_gone_from_a_full_size_photo() -> None:
    raw = fundus_image(seed=3)  # 2866 x 2866, as a Remidio camera takes them
    assert "MRN 12345" in ocr(raw)
    assert re.findall(r"[A-Za-z0-9]", ocr(anonymize_fundus(raw).image)) == []


# --- geometry ----------------------------------------------------------------------------------


def test_field_of_view_is_found_where_it_was_drawn(raw_jpeg: bytes) -> None:
    true_x, true_y, true_r = field_of_view_geometry(SIZE, 0.9)
    found = detect_field_of_view(decode(raw_jpeg))
    assert found is not None
    assert abs(found.centre_x - true_x) < 2
    assert abs(found.centre_y - true_y) < 2
    assert abs(found.radius - true_r) < 0.005 * true_r


def test_pixels_inside_the_disc_survive_jpeg_reencoding(
    raw_jpeg: bytes, clean_jpeg: CleanImage
) -> None:
    found = detect_field_of_view(decode(raw_jpeg))
    assert found is not None
    before, after = pixels(raw_jpeg), pixels(clean_jpeg.image)
    distance = distance_map(SIZE, SIZE, found.centre_x, found.centre_y)
    inside = distance < found.radius - 4

    difference = np.abs(after[inside] - before[inside])

    assert difference.mean() < 2
    assert np.percentile(difference, 99) <= 8


def test_outside_the_disc_is_black(clean_jpeg: CleanImage) -> None:
    true_x, true_y, true_r = field_of_view_geometry(SIZE, 0.9)
    after = pixels(clean_jpeg.image)
    # Past the mask margin plus a JPEG block, where no ringing from the disc edge reaches.
    outside = distance_map(SIZE, SIZE, true_x, true_y) > true_r * 1.01 + 12
    assert after[outside].max() <= 2


def test_png_round_trip_keeps_the_disc_exactly_and_blanks_the_rest_exactly() -> None:
    raw = png_fundus(size=900, seed=4, exif_name=NAME)
    found = detect_field_of_view(decode(raw))
    assert found is not None

    clean = anonymize_fundus(raw, output_format="PNG")

    before, after = pixels(raw), pixels(clean.image)
    distance = distance_map(900, 900, found.centre_x, found.centre_y)
    inside = distance <= found.radius
    assert np.array_equal(after[inside], before[inside])
    outside = distance > found.radius * 1.01 + 4
    assert after[outside].max() == 0
    assert before[outside].max() == 255  # there was white text out there


def test_disc_clipped_at_top_and_bottom_is_masked() -> None:
    size = (1600, 1200)
    raw = fundus_image(size=size, seed=5, disc_fraction=1.15, text_corner="bottom-right")
    true_x, true_y, true_r = field_of_view_geometry(size, 1.15)

    clean = anonymize_fundus(raw)

    assert clean.masked
    after = pixels(clean.image)
    outside = distance_map(*size, true_x, true_y) > true_r * 1.01 + 12
    assert after[outside].max() <= 2
    assert re.findall(r"[A-Za-z0-9]", ocr(clean.image)) == []


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    size = (1000, 750)
    raw = fundus_image(size=size, seed=9, exif_name=NAME, orientation=orientation)
    with Image.open(io.BytesIO(raw)) as stored:
        assert stored.size == (size if orientation <= 4 else size[::-1])

    clean = anonymize_fundus(raw)

    assert (clean.width, clean.height) == size
    after = pixels(clean.image)
    assert after.shape[:2] == (size[1], size[0])
    # Landmark: the yellow optic disc lies right of the centre in the upright picture.
    yellow = after[..., 1] - after[..., 2] // 2
    row, col = np.unravel_index(int(np.argmax(yellow)), yellow.shape)
    assert col > size[0] * 0.6
    assert abs(row - size[1] / 2) < size[1] * 0.15
    # And the whole upright picture matches what a viewer shows for the raw file.
    true_x, true_y, true_r = field_of_view_geometry(size, 0.9)
    inside = distance_map(*size, true_x, true_y) < true_r - 4
    assert np.abs(after[inside] - pixels(raw)[inside]).mean() < 2


# --- no field of view --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: no_disc_image(size=(1200, 900), seed=1),
        lambda: no_disc_image(size=800, seed=2, text_lines=()),
        lambda: _solid((800, 600), (0, 0, 0)),
        lambda: _solid((800, 600), (128, 128, 128)),
        lambda: _left_half_bright((800, 600)),
    ],
    ids=["document", "blank-paper", "black", "grey", "straight-edge"],
)
def test_image_without_a_disc_is_flagged_and_not_masked(make: Callable[[], bytes]) -> None:
    raw = make()

    clean = anonymize_fundus(raw)

    assert not clean.masked
    assert clean.review_reason == NO_FIELD_OF_VIEW
    assert np.abs(pixels(clean.image) - pixels(raw)).mean() < 2
    assert not {marker for marker, _ in jpeg_segments(clean.image)} & METADATA_MARKERS


def test_masked_image_needs_no_review(clean_jpeg: CleanImage) -> None:
    assert clean_jpeg.masked
    assert clean_jpeg.review_reason is None


def _solid(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def _left_half_bright(size: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((200, 90, 40), (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()


# --- unreadable input --------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` (a decompression bomb's header), one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 90, 40)).save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "File is not a readable image"),
        (b"this is not an image at all", "File is not a readable image"),
        (b"\xff\xd8\xff\xe0" + bytes(200), "File is not a readable image"),
        (fundus_image(size=400, seed=1)[:3000], "File is not a readable image"),
        (_gif(), "File is not a readable image"),
        (b"%PDF-1.4\n" + bytes(100), "File is not a readable image"),
        (_png_header_only(8_000, 8_000), "Image is too large to process"),
        (_png_header_only(100_000, 100_000), "Image is too large to process"),
    ],
    ids=["empty", "text", "jpeg-header-only", "truncated", "gif", "pdf", "64mp", "bomb"],
)
def test_unreadable_data_raises_with_a_reason_for_humans(data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableImage) as raised:
        anonymize_fundus(data)
    assert raised.value.reason.startswith(reason)
    assert str(raised.value) == raised.value.reason


# --- encoding and thumbnail --------------------------------------------------------------------


def test_thumbnail_longest_side_is_the_requested_size() -> None:
    raw = fundus_image(size=(1200, 900), seed=6)
    for side in (256, 100):
        clean = anonymize_fundus(raw, thumbnail_size=side)
        with Image.open(io.BytesIO(clean.thumbnail)) as thumbnail:
            assert thumbnail.format == "JPEG"
            assert thumbnail.size == (side, side * 3 // 4)


def test_thumbnail_is_of_the_masked_image(clean_jpeg: CleanImage) -> None:
    thumbnail = pixels(clean_jpeg.thumbnail)
    assert thumbnail.shape[:2] == (256, 256)
    assert thumbnail[:20, :20].max() <= 8  # the burned-in text's corner is black here too


@pytest.mark.parametrize(
    ("source", "output_format", "content_type", "pillow_format"),
    [
        ("jpeg", "JPEG", "image/jpeg", "JPEG"),
        ("png", "JPEG", "image/jpeg", "JPEG"),
        ("png", "PNG", "image/png", "PNG"),
        ("png", "auto", "image/png", "PNG"),
        ("jpeg", "auto", "image/jpeg", "JPEG"),
    ],
)
def test_output_format_and_content_type(
    source: str, output_format: str, content_type: str, pillow_format: str
) -> None:
    raw = fundus_image(size=500, seed=1) if source == "jpeg" else png_fundus(size=500, seed=1)

    clean = anonymize_fundus(raw, output_format=output_format)

    assert clean.content_type == content_type
    with Image.open(io.BytesIO(clean.image)) as image:
        assert image.format == pillow_format
        assert image.mode == "RGB"
        assert image.size == (clean.width, clean.height) == (500, 500)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_pixel_modes_are_converted_to_rgb(mode: str) -> None:
    with Image.open(io.BytesIO(png_fundus(size=400, seed=3))) as source:
        converted = source.convert(mode)
    out = io.BytesIO()
    converted.save(out, format="PNG")

    clean = anonymize_fundus(out.getvalue())

    assert clean.masked
    assert (clean.width, clean.height) == (400, 400)


def test_unknown_output_format_is_a_programming_error(raw_jpeg: bytes) -> None:
    with pytest.raises(ValueError, match="output_format"):
        anonymize_fundus(raw_jpeg, output_format="TIFF")


def test_clean_image_is_frozen(clean_jpeg: CleanImage) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        clean_jpeg.masked = False  # type: ignore[misc]
