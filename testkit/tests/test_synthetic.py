"""The synthetic data generators are deterministic and make what they claim."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytesseract
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageOps

from testkit.synthetic import (
    DEFAULT_BURNED_IN_TEXT,
    field_of_view_geometry,
    fundus_image,
    jpeg_segments,
    large_jpeg_like,
    no_disc_image,
    pdf_bytes,
    png_fundus,
)

NAME = "JANE DOE"
EXIF_IFD = 0x8769


def rgb(data: bytes) -> NDArray[np.int16]:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.int16)


def distance_map(width: int, height: int, centre_x: float, centre_y: float) -> NDArray[np.float64]:
    ys, xs = np.ogrid[0:height, 0:width]
    return np.asarray(np.hypot(xs + 0.5 - centre_x, ys + 0.5 - centre_y), dtype=np.float64)


@pytest.fixture(scope="module")
def named_jpeg() -> bytes:
    return fundus_image(size=800, seed=3, exif_name=NAME)


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: fundus_image(size=600, seed=seed, exif_name=NAME, orientation=6),
        lambda seed: png_fundus(size=300, seed=seed, exif_name=NAME),
        lambda seed: no_disc_image(size=400, seed=seed),
    ],
    ids=["jpeg", "png", "no-disc"],
)
def test_same_seed_same_bytes_other_seed_other_bytes(make: object) -> None:
    assert callable(make)
    assert make(1) == make(1)
    assert make(1) != make(2)


def test_pdf_is_deterministic() -> None:
    assert pdf_bytes(["A", "B"]) == pdf_bytes(["A", "B"])


# --- fundus photo ------------------------------------------------------------------------------


def test_default_is_a_2866_px_jpeg_under_the_5_mb_upload_limit() -> None:
    data = fundus_image()
    assert len(data) < 5 * 1024 * 1024
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (2866, 2866)
        assert image.mode == "RGB"


def test_name_is_in_exif_xmp_iptc_and_comment(named_jpeg: bytes) -> None:
    with Image.open(io.BytesIO(named_jpeg)) as image:
        exif = image.getexif()
        assert exif[0x013B] == NAME  # Artist
        assert NAME in exif[0x010E]  # ImageDescription
        details = exif.get_ifd(EXIF_IFD)
        assert NAME.encode() in details[0x9286]  # UserComment
        assert details[0x9003].startswith("2024:03:")  # DateTimeOriginal
        xmp = image.info["xmp"]
        assert b"<rdf:li>JANE DOE</rdf:li>" in xmp
        assert NAME.encode() in image.info["comment"]
        assert NAME.encode() in image.info["photoshop"][0x0404]  # IPTC By-line
    markers = [marker for marker, _ in jpeg_segments(named_jpeg)]
    assert markers.count(0xE1) == 2  # one APP1 for EXIF, one for XMP
    assert 0xED in markers
    assert 0xFE in markers


def test_without_a_name_there_is_no_metadata() -> None:
    data = fundus_image(size=400, seed=3)
    markers = {marker for marker, _ in jpeg_segments(data)}
    assert not markers & {*range(0xE1, 0xF0), 0xFE}
    with Image.open(io.BytesIO(data)) as image:
        assert dict(image.getexif()) == {}


def test_png_carries_the_name_in_exif_text_and_xmp_chunks() -> None:
    data = png_fundus(size=300, seed=1, exif_name=NAME)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.getexif()[0x013B] == NAME
        image.load()
        assert image.info["Author"] == NAME
        assert NAME in image.info["Comment"]
        assert NAME in image.info["XML:com.adobe.xmp"]


def test_special_characters_in_the_name_keep_the_xmp_well_formed() -> None:
    data = fundus_image(size=300, exif_name="O'Brien & <Sons>")
    with Image.open(io.BytesIO(data)) as image:
        assert b"O'Brien &amp; &lt;Sons&gt;" in image.info["xmp"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_tag_is_written_and_displays_upright(orientation: int) -> None:
    upright = fundus_image(size=(640, 480), seed=4)
    data = fundus_image(size=(640, 480), seed=4, orientation=orientation)
    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif()[0x0112] == orientation
        assert image.size == ((640, 480) if orientation <= 4 else (480, 640))
    displayed = rgb(data)
    assert displayed.shape == (480, 640, 3)
    assert np.abs(displayed - rgb(upright)).mean() < 2  # only JPEG re-blocking differs


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_burned_in_text_is_white_and_outside_the_field_of_view(corner: str) -> None:
    size = (900, 700)
    data = fundus_image(size=size, seed=2, text_corner=corner)  # type: ignore[arg-type]
    pixels = rgb(data)
    white = pixels.min(axis=2) > 200
    assert white.sum() > 500
    centre_x, centre_y, radius = field_of_view_geometry(size, 0.9)
    distance = distance_map(*size, centre_x, centre_y)
    assert distance[white].min() > radius * 1.02
    rows, cols = np.nonzero(white)
    assert (rows.mean() < size[1] / 2) == corner.startswith("top")
    assert (cols.mean() < size[0] / 2) == corner.endswith("left")


def test_burned_in_text_is_readable_by_tesseract() -> None:
    data = fundus_image(size=1433, seed=5)
    with Image.open(io.BytesIO(data)) as image:
        text = pytesseract.image_to_string(image)
    for line in DEFAULT_BURNED_IN_TEXT.split("  "):
        assert line in text


def test_no_burned_in_text_when_asked() -> None:
    pixels = rgb(fundus_image(size=600, seed=2, burned_in_text=None))
    assert (pixels.min(axis=2) > 200).sum() == 0


def test_fundus_has_a_bright_disc_on_a_black_surround() -> None:
    size = 800
    pixels = rgb(fundus_image(size=size, seed=8, disc_fraction=0.8, burned_in_text=None))
    centre_x, centre_y, radius = field_of_view_geometry(size, 0.8)
    distance = distance_map(size, size, centre_x, centre_y)
    red = pixels[..., 0]
    assert red[distance < radius * 0.95].min() > 40  # vignetted, vessels darker, still bright
    assert red[distance > radius + 16].max() < 10  # sensor noise (and JPEG ringing) only
    assert red[distance < radius * 0.5].mean() > 2 * red[distance > radius * 0.9].min()


def test_optic_disc_is_yellow_and_right_of_centre() -> None:
    pixels = rgb(fundus_image(size=800, seed=1, burned_in_text=None))
    yellow = pixels[..., 1] - pixels[..., 2] // 2
    row, col = np.unravel_index(int(np.argmax(yellow)), yellow.shape)
    assert col > 500
    assert abs(row - 400) < 80


def test_vessels_are_seeded() -> None:
    one = rgb(fundus_image(size=400, seed=1, burned_in_text=None))
    two = rgb(fundus_image(size=400, seed=2, burned_in_text=None))
    assert np.abs(one - two).mean() > 3


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="orientation"):
        fundus_image(size=100, orientation=9)
    with pytest.raises(ValueError, match="format"):
        fundus_image(size=100, fmt="GIF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least"):
        fundus_image(size=10)


# --- the other generators ----------------------------------------------------------------------


def test_no_disc_image_is_bright_edge_to_edge() -> None:
    data = no_disc_image(size=(800, 600), seed=1)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (800, 600)
    pixels = rgb(data)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert border.max(axis=1).min() > 150


def test_pdf_is_a_one_page_pdf() -> None:
    data = pdf_bytes(["NAME: JANE DOE", "MRN 12345"])
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    assert data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") >= 1
    assert b"/MediaBox" in data


def test_large_jpeg_like_has_the_exact_size_and_a_jpeg_header(tmp_path: Path) -> None:
    target = tmp_path / "big.jpg"
    size = 48 * 1024 * 1024 + 123

    tracemalloc.start()
    try:
        written = large_jpeg_like(target, size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written == target
    assert target.stat().st_size == size
    assert peak < 4 * 1024 * 1024  # streamed, not built in memory
    with target.open("rb") as handle:
        head = handle.read(4096)
    assert head.startswith(b"\xff\xd8\xff")
    with Image.open(target) as image:
        assert image.format == "JPEG"


def test_large_jpeg_like_refuses_a_size_smaller_than_its_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        large_jpeg_like(tmp_path / "tiny.jpg", 10)
