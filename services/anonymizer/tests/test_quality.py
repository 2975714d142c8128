"""The clean image's perceptual hash finds its report tile; failed captures are flagged.

Bytes in, result out: everything here goes through `anonymize_fundus` as the service does,
except the direct checks of `capture_flags` on pixels.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from anonymizer.fundus import anonymize_fundus, detect_field_of_view
from anonymizer.quality import NOT_GRADABLE, capture_flags
from kit.phash import fundus_phash, same_picture
from testkit.synthetic import fundus_image, png_fundus

SEEDS = range(10)


def jpeg(pixels: np.typing.NDArray[np.float64] | Image.Image, quality: int = 90) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(_u8(pixels), "RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _u8(pixels: np.typing.NDArray[np.float64]) -> np.typing.NDArray[np.uint8]:
    return np.clip(pixels, 0, 255).astype(np.uint8)


def report_tile(data: bytes, side: int = 400) -> Image.Image:
    """What the pdf-parser sees of a capture: the picture downscaled and JPEG-recompressed."""
    with Image.open(io.BytesIO(data)) as opened:
        tile = opened.convert("RGB")
    tile.thumbnail((side, side), Image.Resampling.LANCZOS)
    return Image.open(io.BytesIO(jpeg(tile, quality=75)))


def dimmed(data: bytes, factor: float) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        pixels = np.asarray(opened.convert("RGB"), dtype=np.float64)
    return jpeg(pixels * factor)


def uniform(value: int, *, noise: float = 0.0, size: tuple[int, int] = (1300, 1000)) -> bytes:
    rng = np.random.default_rng(value)
    pixels = np.full((size[1], size[0], 3), float(value))
    if noise:
        pixels += rng.normal(0, noise, pixels.shape)
    return jpeg(pixels)


@pytest.fixture(scope="module")
def originals() -> dict[int, bytes]:
    return {seed: fundus_image(size=1433, seed=seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def clean_hashes(originals: dict[int, bytes]) -> dict[int, str]:
    return {seed: anonymize_fundus(data).phash for seed, data in originals.items()}


# --- perceptual hash ---------------------------------------------------------------------------


def test_the_clean_image_s_hash_matches_a_400_px_jpeg_copy_of_the_original(
    originals: dict[int, bytes], clean_hashes: dict[int, str]
) -> None:
    for seed in SEEDS:
        tile = fundus_phash(report_tile(originals[seed]))
        assert same_picture(clean_hashes[seed], tile), f"seed {seed}"


def test_the_clean_image_s_hash_matches_no_tile_of_another_fundus(
    originals: dict[int, bytes], clean_hashes: dict[int, str]
) -> None:
    tiles = {seed: fundus_phash(report_tile(data)) for seed, data in originals.items()}
    for seed in SEEDS:
        for other in SEEDS:
            if other != seed:
                assert not same_picture(clean_hashes[seed], tiles[other]), (seed, other)


def test_hashing_a_downscaled_copy_gives_the_hash_of_the_full_size_clean_image() -> None:
    for size in (2866, (2000, 1500), 700):
        clean = anonymize_fundus(fundus_image(size=size, seed=4))
        with Image.open(io.BytesIO(clean.image)) as full:
            assert same_picture(clean.phash, fundus_phash(full)), size


def test_the_hash_is_64_hex_digits() -> None:
    digest = anonymize_fundus(fundus_image(size=500, seed=1)).phash
    assert len(digest) == 64 and int(digest, 16) >= 0


# --- gradability -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "capture"),
    [
        ("black", lambda: uniform(0)),
        ("black with sensor noise", lambda: uniform(4, noise=4)),
        ("nearly black", lambda: uniform(12, noise=3)),
        ("uniform grey", lambda: uniform(128)),
        ("grey with sensor noise", lambda: uniform(128, noise=6)),
        ("white", lambda: uniform(255)),
        ("overexposed white with noise", lambda: uniform(250, noise=5)),
        ("a fundus at a tenth of its brightness", lambda: dimmed(fundus_image(size=900), 0.1)),
        ("a small black frame", lambda: uniform(0, size=(320, 240))),
    ],
)
def test_a_black_or_blank_capture_is_flagged_not_gradable(name: str, capture: object) -> None:
    assert callable(capture)
    assert anonymize_fundus(capture()).flags == (NOT_GRADABLE,), name


@pytest.mark.parametrize("seed", SEEDS)
def test_a_normal_fundus_is_not_flagged(seed: int) -> None:
    assert anonymize_fundus(fundus_image(size=900, seed=seed)).flags == ()


@pytest.mark.parametrize("size", [300, 640, (2000, 1500), (1500, 2000), 2866])
def test_a_normal_fundus_of_any_size_is_not_flagged(size: int | tuple[int, int]) -> None:
    assert anonymize_fundus(fundus_image(size=size, seed=5)).flags == ()


@pytest.mark.parametrize("factor", [0.6, 0.4, 0.3])
def test_a_dark_but_real_fundus_is_not_flagged(factor: float) -> None:
    for seed in (0, 3, 7):
        data = dimmed(fundus_image(size=1000, seed=seed), factor)
        assert anonymize_fundus(data).flags == (), f"seed {seed} at {factor:.0%}"


def test_a_small_field_of_view_and_a_png_are_not_flagged() -> None:
    assert anonymize_fundus(fundus_image(size=1200, disc_fraction=0.6, seed=2)).flags == ()
    assert anonymize_fundus(png_fundus(size=700, seed=2)).flags == ()


def test_capture_flags_measures_inside_the_field_of_view_only() -> None:
    # A fundus whose field of view is blank grey: the black surround's contrast with it
    # must not count as structure.
    pixels = np.zeros((800, 800, 3))
    ys, xs = np.ogrid[0:800, 0:800]
    pixels[np.hypot(xs - 400, ys - 400) < 360] = 140.0
    image = Image.fromarray(_u8(pixels), "RGB")
    fov = detect_field_of_view(image)
    assert fov is not None
    assert capture_flags(image, fov) == (NOT_GRADABLE,)
    assert capture_flags(image) == ()  # the whole frame has contrast: the disc's edge


def test_capture_flags_of_a_real_fundus_image_is_empty() -> None:
    with Image.open(io.BytesIO(fundus_image(size=700, seed=8))) as opened:
        image = opened.convert("RGB")
    assert capture_flags(image, detect_field_of_view(image)) == ()
