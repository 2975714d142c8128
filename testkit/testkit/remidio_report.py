"""Synthetic Remidio "Fundus on Phone" screening reports (PDF), drawn from values we choose.

A real report has no text layer: two A4 pages made by iOS Quartz, every line of text a small
bitmap placed on the page. Page 1 is the "Diabetic Retinopathy Report" (site header beside a
logo, a 3 x 2 patient band, the DR result in green or red, sometimes a warning, 1-4 fundus
tiles with RE/LE badges); page 2 the "Glaucoma Screening Report" (white title on a green
banner, the band in another order, a VCDR box per eye, the result in green or orange).
`draw_report` draws exactly that from a `ReportValues`; with `text_layer=True` it draws the
same layout as real PDF text (Helvetica) instead, as a camera with a text layer would.
Everything is made up from a seed; nothing comes from a patient.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from testkit.minipdf import A4, PdfImage, PdfItem, PdfPage, PdfRect, PdfText, write_pdf
from testkit.synthetic import fundus_image

__all__ = [
    "ILLEGIBLE_FIELDS",
    "PRODUCER",
    "ReportValues",
    "draw_report",
    "random_report_values",
]

PRODUCER = "iOS Version 17.5 (Build 21F79) Quartz PDFContext"
# What `draw_report(illegible=...)` can smear beyond reading (a smudged or faded print).
ILLEGIBLE_FIELDS = frozenset({"report_date", "age", "gender", "mrn", "vcdr_right"})

RGB = tuple[int, int, int]
BLACK: RGB = (20, 20, 20)
GREY: RGB = (90, 90, 90)
GREEN: RGB = (34, 139, 34)
RED: RGB = (200, 30, 30)
ORANGE: RGB = (230, 120, 0)
BANNER: RGB = (46, 139, 87)
BADGE: RGB = (35, 35, 40)
WHITE: RGB = (255, 255, 255)
_RULE = (0.75, 0.75, 0.75)

_SCALE = 2.8  # bitmap pixels per point: text bitmaps of about 200 DPI, as the camera app makes
_FONTS = {
    False: "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    True: "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
}
_HELVETICA_WIDTH = 0.9  # Helvetica is about this much narrower than DejaVu Sans


@dataclass(frozen=True, kw_only=True)
class ReportValues:
    name: str
    mrn: str
    gender: str
    age: int
    doctor: str | None
    report_date: dt.date
    site_header: tuple[str, str]
    dr_referable: bool
    dr_result: str
    dr_warning: str | None
    tiles: tuple[tuple[str, bytes], ...] = field(repr=False)  # (eye "RE"/"LE", its JPEG)
    vcdr_right: float
    vcdr_left: float
    vcdr_right_note: str
    vcdr_left_note: str
    glaucoma_result: str
    glaucoma_referable: bool

    @property
    def printed_date(self) -> str:
        return self.report_date.strftime("%d %b %Y")


_FIRST = (
    "Ravi", "Sunita", "Mohan", "Anita", "Rajesh", "Kavita", "Suresh", "Pooja", "Amit", "Neha",
    "Vijay", "Lakshmi", "Deepak", "Meena", "Arjun", "Geeta", "Harish", "Rekha", "Manoj", "Sarita",
)  # fmt: skip
_LAST = (
    "Kumar", "Sharma", "Devi", "Singh", "Yadav", "Gupta", "Verma", "Rani", "Chauhan", "Mehta",
    "Joshi", "Prasad", "Nair", "Reddy", "Pandey", "Mishra",
)  # fmt: skip
_SITES = (
    "COMMUNITY OPHTHALMOLOGY, AIIMS",
    "DR. R.P. CENTRE, AIIMS",
    "RURAL HEALTH TRAINING CENTRE, AIIMS",
)
_PLACES = ("BALLABGARH", "JHAJJAR", "DAYALPUR", "CHHAINSA", "GURGAON", "SOHNA")
_DR_CLEAR = (
    "No signs of DR detected. Re-examine after 12 months.",
    "No signs of DR detected. Re-examine after 12 months.",
    "No signs of DR detected. Re-exmaine after 12 months.",
)
_DR_SIGNS = (
    "Signs of DR detected. Examples of lesions are highlighted.",
    "Signs of DR detected. Examples of lesions are highlighted.",
    "Signs of DR detected. Exmaples of lesions are highlited.",
)
_WARNING = "Images insufficient for accurate DR screening"
_GLAUCOMA_CLEAR = (
    "No Referable Glaucoma - Re-examine after 12 months",
    "No Referable Glaucoma - Re-examine after 12 months",
    "No Refferable Glaucoma - Re-examine after 12 months",
)
_GLAUCOMA_REFER = (
    "Referable Glaucoma - Consult an ophthalmologist",
    "Refferable Glaucoma - Consult an ophthalmologist",
    "Referrable Glaucoma - Please consult an ophthalmologist",
)


def _vcdr_note(value: float) -> str:
    if value < 0.6:
        return "Normal"
    if value < 0.8:
        return "Borderline High"
    return "High"


def random_report_values(
    rng: random.Random, *, tiles: Sequence[tuple[str, bytes]] | None = None
) -> ReportValues:
    """Plausible values: sometimes a lower-case name, no doctor, a warning, the vendor's
    misspelt sentences; 1-4 tiles (small fundus pictures) unless `tiles` are given."""
    words = [rng.choice(_FIRST)] + [rng.choice(_LAST) for _ in range(rng.choice((0, 1, 1, 1, 2)))]
    name = " ".join(words)
    if rng.random() < 0.25:
        name = name.lower()
    doctor = None if rng.random() < 0.35 else f"Dr. {rng.choice(_FIRST)} {rng.choice(_LAST)}"
    if tiles is None:
        count = rng.randint(1, 4)
        eyes = ["RE", "LE", "RE", "LE"][:count] if rng.random() < 0.6 else None
        if eyes is None:
            eyes = [rng.choice(("RE", "LE")) for _ in range(count)]
        tiles = [
            (eye, fundus_image(size=600, seed=rng.randrange(1 << 30), burned_in_text=None))
            for eye in eyes
        ]
    dr_referable = rng.random() < 0.4
    vcdr = [0.0 if rng.random() < 0.15 else round(rng.randint(20, 95) / 100, 2) for _ in range(2)]
    notes = [_vcdr_note(v) for v in vcdr]
    glaucoma_referable = "High" in notes
    return ReportValues(
        name=name,
        mrn=f"{rng.randrange(10**7, 10**8)}",
        gender=rng.choice(("Male", "Female")),
        age=rng.randint(18, 92),
        doctor=doctor,
        report_date=dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(900)),
        site_header=(rng.choice(_SITES), f"{rng.choice(_PLACES)} {rng.randint(1, 4)}"),
        dr_referable=dr_referable,
        dr_result=rng.choice(_DR_SIGNS if dr_referable else _DR_CLEAR),
        dr_warning=_WARNING if rng.random() < 0.25 else None,
        tiles=tuple(tiles),
        vcdr_right=vcdr[0],
        vcdr_left=vcdr[1],
        vcdr_right_note=notes[0],
        vcdr_left_note=notes[1],
        glaucoma_result=rng.choice(_GLAUCOMA_REFER if glaucoma_referable else _GLAUCOMA_CLEAR),
        glaucoma_referable=glaucoma_referable,
    )


# --- layout ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    text: str
    colour: RGB = BLACK
    bold: bool = False


@dataclass(frozen=True, kw_only=True)
class _Line:
    """A line of text runs whose box starts at (x, top); `right` aligns its end there."""

    x: float
    top: float
    size: float
    runs: tuple[_Run, ...]
    right: bool = False
    illegible: bool = False


@dataclass(frozen=True, kw_only=True)
class _Banner:
    x: float
    top: float
    width: float
    height: float
    text: str
    size: float


@dataclass(frozen=True, kw_only=True)
class _Badge:
    x: float
    top: float
    text: str


_Element = _Line | _Banner | _Badge | PdfImage | PdfRect

_PAGE_W = A4[0]
_MARGIN = 40.0
_COLUMNS = (_MARGIN, 262.0, 448.0)
_TILE = 240.0
_TILE_SLOTS = ((47.0, 270.0), (308.0, 270.0), (47.0, 530.0), (308.0, 530.0))


def _cell(x: float, top: float, label: str, value: str, *, illegible: bool = False) -> _Line:
    return _Line(
        x=x,
        top=top,
        size=9.5,
        runs=(_Run(label + " ", GREY, bold=True), _Run(value)),
        illegible=illegible,
    )


def _header(values: ReportValues) -> list[_Element]:
    return [
        PdfImage.rgb(_logo(), x=_MARGIN, top=28, width=56, height=56),
        _Line(
            x=_PAGE_W - _MARGIN,
            top=34,
            size=11,
            runs=(_Run(values.site_header[0], bold=True),),
            right=True,
        ),
        _Line(
            x=_PAGE_W - _MARGIN, top=52, size=11, runs=(_Run(values.site_header[1]),), right=True
        ),
        PdfRect(x=_MARGIN, top=96, width=_PAGE_W - 2 * _MARGIN, height=0.8, fill=_RULE),
    ]


def _dr_page(values: ReportValues, smear: Collection[str]) -> list[_Element]:
    doctor = values.doctor or "N/A"
    c1, c2, c3 = _COLUMNS
    elements: list[_Element] = [
        *_header(values),
        _Line(x=170, top=108, size=16, runs=(_Run("Diabetic Retinopathy Report", bold=True),)),
        _cell(c1, 148, "Patient MRN:", values.mrn, illegible="mrn" in smear),
        _cell(c2, 148, "Gender:", values.gender, illegible="gender" in smear),
        _cell(c3, 148, "Age:", str(values.age), illegible="age" in smear),
        _cell(c1, 170, "Patient Name:", values.name),
        _cell(c2, 170, "Doctor:", doctor),
        _cell(c3, 170, "Date:", values.printed_date, illegible="report_date" in smear),
        _Line(
            x=c1,
            top=208,
            size=11,
            runs=(
                _Run("Result DR: ", bold=True),
                _Run(values.dr_result, RED if values.dr_referable else GREEN),
            ),
        ),
    ]
    if values.dr_warning:
        elements.append(
            _Line(x=c1, top=232, size=10, runs=(_Run("Warning: " + values.dr_warning, RED),))
        )
    for (eye, jpeg), (x, top) in zip(values.tiles, _TILE_SLOTS, strict=False):
        elements.append(PdfImage.jpeg(jpeg, x=x, top=top, width=_TILE, height=_TILE))
        elements.append(_Badge(x=x + 6, top=top + 6, text=eye))
    return elements


def _glaucoma_page(values: ReportValues, smear: Collection[str]) -> list[_Element]:
    doctor = values.doctor or "N/A"
    c1, c2, c3 = _COLUMNS
    width = _PAGE_W - 2 * _MARGIN
    title = "Glaucoma Screening Report"
    elements: list[_Element] = [
        *_header(values),
        _Banner(x=_MARGIN, top=104, width=width, height=30, text=title, size=15),
        _cell(c1, 150, "Name:", values.name),
        _cell(c2, 150, "MRN:", values.mrn, illegible="mrn" in smear),
        _cell(c3, 150, "Age:", str(values.age), illegible="age" in smear),
        _cell(c1, 172, "Doctor:", doctor),
        _cell(c2, 172, "Gender:", values.gender, illegible="gender" in smear),
        _cell(c3, 172, "Date:", values.printed_date, illegible="report_date" in smear),
    ]
    for x, eye, vcdr, note in (
        (c1 + 10, "Right Eye", values.vcdr_right, values.vcdr_right_note),
        (300.0, "Left Eye", values.vcdr_left, values.vcdr_left_note),
    ):
        elements.append(PdfRect(x=x - 10, top=208, width=245, height=0.8, fill=(0.7, 0.7, 0.7)))
        elements.append(_Line(x=x, top=216, size=12, runs=(_Run(eye, bold=True),)))
        elements.append(
            _Line(
                x=x,
                top=240,
                size=11,
                runs=(_Run(f"VCDR - {vcdr:.2f} ({note})"),),
                illegible=eye == "Right Eye" and "vcdr_right" in smear,
            )
        )
        elements.append(PdfRect(x=x - 10, top=262, width=245, height=0.8, fill=(0.7, 0.7, 0.7)))
    colour = ORANGE if values.glaucoma_referable else GREEN
    elements.append(
        _Line(x=c1, top=290, size=12, runs=(_Run(values.glaucoma_result, colour, bold=True),))
    )
    return elements


# --- drawing -----------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _font(px: int, bold: bool) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _FONTS[bold]
    if Path(path).is_file():
        return ImageFont.truetype(path, px)
    return ImageFont.load_default(size=px)


def _run_width(run: _Run, size: float) -> float:
    """The run's width in points, as drawn (DejaVu) or as Helvetica roughly sets it."""
    return _font(round(size * _SCALE), run.bold).getlength(run.text) / _SCALE


def _line_bitmap(line: _Line) -> Image.Image:
    px = round(line.size * _SCALE)
    fonts = [_font(px, run.bold) for run in line.runs]
    width = sum(f.getlength(r.text) for f, r in zip(fonts, line.runs, strict=True))
    pad = round(px * 0.25)
    image = Image.new("RGB", (round(width) + 2 * pad, round(px * 1.3) + 2 * pad), WHITE)
    draw = ImageDraw.Draw(image)
    x = float(pad)
    for font, run in zip(fonts, line.runs, strict=True):
        draw.text((x, pad), run.text, fill=run.colour, font=font)
        x += font.getlength(run.text)
    if line.illegible:
        image = image.filter(ImageFilter.GaussianBlur(px * 0.45))
    return image


def _banner_bitmap(banner: _Banner) -> Image.Image:
    size = (round(banner.width * _SCALE), round(banner.height * _SCALE))
    image = Image.new("RGB", size, BANNER)
    draw = ImageDraw.Draw(image)
    font = _font(round(banner.size * _SCALE), True)
    draw.text((size[0] / 2, size[1] / 2), banner.text, fill=WHITE, font=font, anchor="mm")
    return image


def _badge_bitmap(text: str) -> Image.Image:
    image = Image.new("RGB", (round(26 * _SCALE), round(20 * _SCALE)), BADGE)
    draw = ImageDraw.Draw(image)
    font = _font(round(11 * _SCALE), True)
    draw.text((image.width / 2, image.height / 2), text, fill=WHITE, font=font, anchor="mm")
    return image


def _logo() -> Image.Image:
    side = 160
    image = Image.new("RGB", (side, side), WHITE)
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, side - 8, side - 8), fill=(0, 122, 140))
    draw.ellipse((36, 56, side - 36, side - 56), fill=WHITE)
    draw.ellipse((62, 62, side - 62, side - 62), fill=(20, 40, 60))
    return image


def _as_bitmaps(element: _Element) -> list[PdfItem]:
    if isinstance(element, PdfImage | PdfRect):
        return [element]
    if isinstance(element, _Banner):
        bitmap = _banner_bitmap(element)
        return [
            PdfImage.rgb(
                bitmap, x=element.x, top=element.top, width=element.width, height=element.height
            )
        ]
    if isinstance(element, _Badge):
        bitmap = _badge_bitmap(element.text)
        return [PdfImage.rgb(bitmap, x=element.x, top=element.top, width=26, height=20)]
    bitmap = _line_bitmap(element)
    width, height = bitmap.width / _SCALE, bitmap.height / _SCALE
    x = element.x - width if element.right else element.x
    return [PdfImage.rgb(bitmap, x=x, top=element.top, width=width, height=height)]


def _unit(colour: RGB) -> tuple[float, float, float]:
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


def _as_text(element: _Element) -> list[PdfItem]:
    if isinstance(element, PdfImage | PdfRect):
        return [element]
    if isinstance(element, _Banner):
        run = _Run(element.text, bold=True)
        text_x = element.x + (element.width - _run_width(run, element.size) * _HELVETICA_WIDTH) / 2
        return [
            PdfRect(
                x=element.x,
                top=element.top,
                width=element.width,
                height=element.height,
                fill=_unit(BANNER),
            ),
            PdfText(
                x=text_x,
                baseline=element.top + element.height / 2 + element.size * 0.35,
                text=element.text,
                size=element.size,
                bold=True,
                colour=(1.0, 1.0, 1.0),
            ),
        ]
    if isinstance(element, _Badge):
        return [
            PdfRect(x=element.x, top=element.top, width=26, height=20, fill=_unit(BADGE)),
            PdfText(
                x=element.x + 5,
                baseline=element.top + 14,
                text=element.text,
                size=11,
                bold=True,
                colour=(1.0, 1.0, 1.0),
            ),
        ]
    widths = [_run_width(run, element.size) for run in element.runs]
    x = element.x - sum(widths) if element.right else element.x
    items: list[PdfItem] = []
    for run, width in zip(element.runs, widths, strict=True):
        items.append(
            PdfText(
                x=x,
                baseline=element.top + element.size * 1.05,
                text=run.text,
                size=element.size,
                bold=run.bold,
                colour=_unit(run.colour),
            )
        )
        x += width  # DejaVu's width: a little more than Helvetica's, so runs never touch
    return items


def draw_report(
    values: ReportValues, *, text_layer: bool = False, illegible: Collection[str] = ()
) -> bytes:
    """The two-page report PDF. `illegible` names fields (`ILLEGIBLE_FIELDS`) whose printed
    value is smeared beyond reading (image-only reports)."""
    unknown = set(illegible) - ILLEGIBLE_FIELDS
    if unknown:
        raise ValueError(f"cannot smear {sorted(unknown)}; choose from {sorted(ILLEGIBLE_FIELDS)}")
    convert = _as_text if text_layer else _as_bitmaps
    pages = []
    for elements in (_dr_page(values, illegible), _glaucoma_page(values, illegible)):
        items = [item for element in elements for item in convert(element)]
        pages.append(PdfPage(items=items))
    return write_pdf(pages, producer=PRODUCER)
