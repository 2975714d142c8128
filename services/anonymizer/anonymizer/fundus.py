"""Anonymize a fundus photo: upright it, black out everything outside the field of view, and
re-encode fresh pixels with no metadata at all.

Fundus cameras burn the patient's name, MRN and date of birth into the black surround of the
photo, and write them into EXIF/XMP/IPTC/comment metadata. The retina itself is a bright disc (the
field of view) on that black surround, so anything outside the disc can be blanked without losing
clinical content. Pure functions: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from anonymizer.quality import capture_flags
from kit.phash import fundus_phash

__all__ = [
    "MAX_PIXELS",
    "NO_FIELD_OF_VIEW",
    "CleanImage",
    "FieldOfView",
    "UnreadableImage",
    "anonymize_fundus",
    "detect_field_of_view",
]

MAX_PIXELS = 60_000_000
"""Largest image accepted (width x height); fundus cameras go up to ~24 MP."""
NO_FIELD_OF_VIEW = "No fundus field of view detected; not masked"

_ACCEPTED_FORMATS = ("JPEG", "PNG")
_CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
_JPEG_QUALITY = 95
_THUMBNAIL_QUALITY = 85
# Detection runs on a copy at most this many pixels across: plenty for a circle fit (boundary
# points are averaged) and ~40x fewer pixels than a 2866 px photo.
_DETECT_SIDE = 512
# Blank from slightly outside the fitted circle: the fit is accurate to about a detection pixel,
# and the retina must never lose a pixel; text sits well clear of the disc edge.
_MARGIN_FRACTION = 0.01
_MARGIN_MIN_PIXELS = 3
# Limit on bright runs in the detection mask; a photo with more is noise, not a disc on black.
_MAX_RUNS = 40_000

UInt8Array = NDArray[np.uint8]
FloatArray = NDArray[np.float64]


class UnreadableImage(ValueError):
    """The bytes are not an image this service can decode; `reason` is for a human."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CleanImage:
    """An anonymized image and its thumbnail, both freshly encoded without metadata."""

    image: bytes
    thumbnail: bytes
    content_type: str
    width: int
    height: int
    masked: bool
    review_reason: str | None
    phash: str  # `kit.phash.fundus_phash` of the clean picture
    flags: tuple[str, ...] = ()  # `anonymizer.quality.capture_flags`: "Image not gradable"


@dataclass(frozen=True)
class FieldOfView:
    """The circular field of view, in pixel-edge coordinates of the upright image.

    Pixel (col, row) covers ``[col, col + 1) x [row, row + 1)``; its centre is at +0.5.
    """

    centre_x: float
    centre_y: float
    radius: float


def anonymize_fundus(
    data: bytes,
    *,
    thumbnail_size: int = 256,
    output_format: str = "JPEG",
) -> CleanImage:
    """Decode `data`, upright it, blank outside the field of view, re-encode without metadata.

    `output_format` is "JPEG" (quality 95), "PNG" (lossless), or "auto" (PNG for a PNG input,
    otherwise JPEG). When no field of view is found the image is kept whole (`masked` False) and
    `review_reason` says why a human should look at it. Raises `UnreadableImage` for data that is
    not a decodable JPG/PNG, or an image larger than `MAX_PIXELS`.
    """
    if thumbnail_size < 1:
        raise ValueError("thumbnail_size must be positive")
    requested = output_format.upper()
    if requested not in ("JPEG", "JPG", "PNG", "AUTO"):
        raise ValueError(f"output_format must be 'JPEG', 'PNG' or 'auto', not {output_format!r}")

    upright, source_format = _decode_upright(data)
    fmt = source_format if requested == "AUTO" else ("PNG" if requested == "PNG" else "JPEG")

    pixels = np.array(upright, dtype=np.uint8)  # a private copy: masked in place
    fov = detect_field_of_view(upright)
    if fov is not None:
        _blank_outside(pixels, fov)
    # A new image from the bare pixel array: no EXIF, XMP, ICC, IPTC or comment can come along.
    clean = Image.fromarray(pixels, "RGB")
    height, width = pixels.shape[:2]
    # Hash and grade a box-filtered copy at most _DETECT_SIDE across: the hash reads a 17 x 16
    # grid and the grading percentiles, so full size adds nothing but time (a 2866 px photo
    # has 31x the pixels).
    factor = max(1, math.ceil(max(width, height) / _DETECT_SIDE))
    small_clean = clean.reduce(factor) if factor > 1 else clean
    small_upright = upright.reduce(factor) if factor > 1 else upright
    small_fov = (
        None
        if fov is None
        else FieldOfView(fov.centre_x / factor, fov.centre_y / factor, fov.radius / factor)
    )
    return CleanImage(
        image=_encode(clean, fmt),
        thumbnail=_thumbnail(clean, thumbnail_size),
        content_type=_CONTENT_TYPES[fmt],
        width=width,
        height=height,
        masked=fov is not None,
        review_reason=None if fov is not None else NO_FIELD_OF_VIEW,
        phash=fundus_phash(small_clean),
        flags=capture_flags(small_upright, small_fov),
    )


def detect_field_of_view(image: Image.Image) -> FieldOfView | None:
    """Find the bright circular field of view on a dark surround, or None when there is none.

    Works on a downscaled copy: threshold the brightest channel just above the surround's level
    (so a vignetted, dim rim still counts), take the largest bright region (burned-in text is
    small), fit a circle to its left/right/top/bottom edges that do not touch the image border
    (so a disc clipped at the top and bottom still fits), then check that the circle explains the
    picture: bright inside, dark outside.
    """
    width, height = image.size
    factor = max(1, math.ceil(max(width, height) / _DETECT_SIDE))
    small = image.convert("RGB").reduce(factor) if factor > 1 else image.convert("RGB")
    red, green, blue = small.split()
    brightness = np.asarray(ImageChops.lighter(ImageChops.lighter(red, green), blue))

    dark = float(np.percentile(brightness, 1))
    bright = float(np.percentile(brightness, 99))
    if dark > 60 or bright - dark < 40:
        return None  # no dark surround, or no contrast at all
    threshold = dark + max(12.0, 0.12 * (bright - dark))
    mask = brightness > threshold

    region = _largest_region(mask)
    if region is None:
        return None
    rows, starts, ends = region
    circle = _fit_edges(rows, starts, ends, mask.shape)
    if circle is None:
        return None
    centre_x, centre_y, radius = circle
    if not _explains(mask, centre_x, centre_y, radius):
        return None
    # Small-image pixel i covers full-size pixels [i * factor, (i + 1) * factor).
    return FieldOfView(centre_x * factor, centre_y * factor, radius * factor)


# --- decoding ----------------------------------------------------------------------------------


def _decode_upright(data: bytes) -> tuple[Image.Image, str]:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat it as the bomb it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Not a `with` block: closing would free the pixels, and an in-memory file holds no
            # OS resource. Every step below works on this one decoded copy, in place.
            opened = Image.open(io.BytesIO(data), formats=_ACCEPTED_FORMATS)
            source_format = opened.format or "JPEG"
            opened_width, opened_height = opened.size
            if opened_width * opened_height > MAX_PIXELS:
                raise UnreadableImage(
                    f"Image is too large to process ({opened_width} x {opened_height} pixels; "
                    f"at most {MAX_PIXELS // 1_000_000} megapixels)"
                )
            opened.load()
            _exif_transpose_in_place(opened)
            rgb = opened.convert("RGB") if opened.mode != "RGB" else opened
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage("Image is too large to process (decompression bomb)") from error
    except UnidentifiedImageError as error:
        raise UnreadableImage("File is not a readable image (expected JPG or PNG)") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableImage("File is not a readable image (truncated or corrupt)") from error
    if rgb.width < 1 or rgb.height < 1:
        raise UnreadableImage("File is not a readable image (empty)")
    return rgb, source_format


def _exif_transpose_in_place(image: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (SyntaxError, ValueError, KeyError, TypeError, OSError):
        # Unparseable EXIF: no trustworthy orientation, keep the pixels as stored.
        return


# --- detection ---------------------------------------------------------------------------------


def _largest_region(
    mask: NDArray[np.bool_],
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]] | None:
    """The largest 4-connected bright region of `mask`, as per-row (row, first, end) extents.

    Labels horizontal runs and unions runs that overlap on adjacent rows; a detection mask has a
    few runs per row, so this is quick without an image-processing library.
    """
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(steps == 1)
    _, run_ends = np.nonzero(steps == -1)  # exclusive; same row-major order as the starts
    count = len(run_rows)
    if count == 0 or count > _MAX_RUNS:
        return None

    parent = list(range(count))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    row_bounds = np.searchsorted(run_rows, np.arange(mask.shape[0] + 1))
    starts_list, ends_list = run_starts.tolist(), run_ends.tolist()
    for row in range(1, mask.shape[0]):
        above, above_end = int(row_bounds[row - 1]), int(row_bounds[row])
        here, here_end = above_end, int(row_bounds[row + 1])
        while above < above_end and here < here_end:
            if starts_list[above] < ends_list[here] and starts_list[here] < ends_list[above]:
                a, b = root(above), root(here)
                if a != b:
                    parent[b] = a
            if ends_list[above] <= ends_list[here]:
                above += 1
            else:
                here += 1

    labels = np.fromiter((root(index) for index in range(count)), dtype=np.intp, count=count)
    lengths = run_ends - run_starts
    areas = np.bincount(labels, weights=lengths, minlength=count)
    largest = int(np.argmax(areas))
    chosen = labels == largest
    rows, starts, ends = run_rows[chosen], run_starts[chosen], run_ends[chosen]
    # Per-row outer extents, which also fills holes (dark vessels, a dim macula).
    unique_rows, first = np.unique(rows, return_index=True)
    row_starts = np.minimum.reduceat(starts, first)
    row_ends = np.maximum.reduceat(ends, first)
    return unique_rows, row_starts, row_ends


def _fit_edges(
    rows: NDArray[np.intp],
    starts: NDArray[np.intp],
    ends: NDArray[np.intp],
    shape: tuple[int, ...],
) -> tuple[float, float, float] | None:
    height, width = shape[0], shape[1]
    if len(rows) < 8:
        return None
    filled = np.zeros((height, width), dtype=bool)
    columns = np.arange(width)
    filled[rows] = (columns[None, :] >= starts[:, None]) & (columns[None, :] < ends[:, None])

    xs: list[FloatArray] = []
    ys: list[FloatArray] = []
    centres = rows.astype(np.float64) + 0.5
    left_ok, right_ok = starts > 0, ends < width
    xs += [starts[left_ok].astype(np.float64), ends[right_ok].astype(np.float64)]
    ys += [centres[left_ok], centres[right_ok]]

    occupied = filled.any(axis=0)
    cols = np.nonzero(occupied)[0]
    tops = np.argmax(filled[:, cols], axis=0)
    bottoms = height - np.argmax(filled[::-1, cols], axis=0)
    col_centres = cols.astype(np.float64) + 0.5
    top_ok, bottom_ok = tops > 0, bottoms < height
    xs += [col_centres[top_ok], col_centres[bottom_ok]]
    ys += [tops[top_ok].astype(np.float64), bottoms[bottom_ok].astype(np.float64)]

    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) < 24:
        return None  # the region fills the frame: no edge against a dark surround
    keep = np.ones(len(x), dtype=bool)
    for _ in range(3):  # refit without outliers (text touching the disc, a notch, a flare)
        fitted = _circle_through(x[keep], y[keep])
        if fitted is None:
            return None
        centre_x, centre_y, radius = fitted
        residual = np.abs(np.hypot(x - centre_x, y - centre_y) - radius)
        keep = residual <= max(1.5, 3.0 * float(np.median(residual[keep])))
    if keep.mean() < 0.8:
        return None  # the edge is not a circle
    angles = np.arctan2(y[keep] - centre_y, x[keep] - centre_x)
    covered = np.unique(((angles + math.pi) / (2 * math.pi) * 36).astype(np.intp) % 36)
    if len(covered) < 15:
        return None  # an arc too short to call a disc (a straight or corner edge)
    if radius < 0.25 * min(width, height) or not (
        0 <= centre_x <= width and 0 <= centre_y <= height
    ):
        return None
    return centre_x, centre_y, radius


def _circle_through(x: FloatArray, y: FloatArray) -> tuple[float, float, float] | None:
    """Least-squares circle (Kasa): x^2 + y^2 + D x + E y + F = 0."""
    if len(x) < 3:
        return None
    design = np.column_stack([x, y, np.ones_like(x)])
    target = -(x * x + y * y)
    (d, e, f), *_ = np.linalg.lstsq(design, target, rcond=None)
    centre_x, centre_y = -d / 2, -e / 2
    squared = centre_x * centre_x + centre_y * centre_y - f
    if not math.isfinite(squared) or squared <= 0:
        return None
    return float(centre_x), float(centre_y), math.sqrt(squared)


def _explains(mask: NDArray[np.bool_], centre_x: float, centre_y: float, radius: float) -> bool:
    """Bright inside the circle, dark outside it (a little text aside), something to blank."""
    height, width = mask.shape
    ys, xs = np.ogrid[0:height, 0:width]
    distance = np.hypot(xs + 0.5 - centre_x, ys + 0.5 - centre_y)
    inside = distance < radius - 1.5
    outside = distance > radius + 1.5
    if inside.sum() == 0 or outside.sum() < 0.03 * mask.size:
        return False
    bright_inside = float(mask[inside].mean())
    bright_outside = float(mask[outside].mean())
    return bright_inside >= 0.9 and bright_outside <= 0.15


# --- masking and encoding ----------------------------------------------------------------------


def _blank_outside(pixels: UInt8Array, fov: FieldOfView) -> None:
    """Set to black every pixel whose centre lies outside the circle grown by a small margin."""
    height, width = pixels.shape[:2]
    radius = fov.radius + max(_MARGIN_MIN_PIXELS, _MARGIN_FRACTION * fov.radius)
    centres = np.arange(height, dtype=np.float64) + 0.5 - fov.centre_y
    half = np.sqrt(np.clip(radius * radius - centres * centres, 0, None))
    inside_rows = np.abs(centres) <= radius
    # Keep columns whose centre c + 0.5 lies in [cx - half, cx + half].
    first = np.ceil(fov.centre_x - half - 0.5).astype(np.int64).clip(0, width)
    last = np.floor(fov.centre_x + half - 0.5).astype(np.int64).clip(-1, width - 1) + 1
    for row in range(height):
        if not inside_rows[row] or last[row] <= first[row]:
            pixels[row] = 0
            continue
        pixels[row, : first[row]] = 0
        pixels[row, last[row] :] = 0


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "PNG":
        image.save(out, format="PNG", compress_level=3)
    else:
        image.save(out, format="JPEG", quality=_JPEG_QUALITY)
    return out.getvalue()


def _thumbnail(image: Image.Image, side: int) -> bytes:
    scale = min(1.0, side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=_THUMBNAIL_QUALITY)
    return out.getvalue()
