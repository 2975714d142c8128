"""Reading a Remidio screening report: per page the text layer first (pdfplumber), else the
page rendered (pypdfium2) and read by OCR (Tesseract); then the fields by label.

Pure apart from the Tesseract subprocess. The patient's name and MRN are kept apart from the
fields (`patient_name`, `patient_mrn`): they are PHI and go only to the vault.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pdfplumber
import pypdfium2 as pdfium
from numpy.typing import NDArray

from contracts.events import ReportField, ReportTile
from pdf_parser.fields import MIN_CONFIDENCE, Candidate, combine, phi_fragments, read_page
from pdf_parser.layout import Line, Word, group_lines, words_within
from pdf_parser.ocr import (
    DPI,
    TesseractFailed,
    badges_in,
    parse_tsv,
    prepare_page,
    run_tesseract,
    with_badge_strip,
)
from pdf_parser.tiles import PageImage, page_images, read_tiles

__all__ = [
    "FIELD_NAMES",
    "PARSER_VERSION",
    "PageUnreadable",
    "ReportReading",
    "ReportUnreadable",
    "read_report",
]

PARSER_VERSION = "pdf-parser/remidio-2"
ReportKind = Literal["dr", "glaucoma", "combined", "unknown"]

_DR_FIELDS = ("dr_result", "dr_warning", "dr_referable", "eye_labels")
_GLAUCOMA_FIELDS = (
    "vcdr_right",
    "vcdr_left",
    "vcdr_right_note",
    "vcdr_left_note",
    "glaucoma_result",
    "glaucoma_referable",
)
FIELD_NAMES = (
    "gender",
    "age",
    "doctor",
    "report_date",
    "dr_result",
    "dr_warning",
    "dr_referable",
    *_GLAUCOMA_FIELDS,
    "eye_labels",
    "site_header",
)
_TEXT_LAYER_CHARACTERS = 10  # fewer characters than this: a scanned page, read it by OCR
# pdfium is not thread-safe and the handler reads reports in worker threads.
_PDFIUM = threading.Lock()


class ReportUnreadable(Exception):
    """The report (or one of its pages) could not be read; `reason` says so for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PageUnreadable(ReportUnreadable):
    def __init__(self, page: int, detail: str = "") -> None:
        super().__init__(
            f"Report page {page} could not be read" + (f" ({detail})" if detail else "")
        )
        self.page = page


@dataclass(frozen=True, kw_only=True)
class ReportReading:
    page_kinds: tuple[str, ...]
    report_kind: ReportKind
    method: Literal["text", "ocr"]
    fields: dict[str, ReportField]
    tiles: tuple[ReportTile, ...]
    raw_text: str
    parser_version: str = PARSER_VERSION
    # PHI: for the vault only, never in fields, events or logs.
    patient_name: str | None = field(default=None, repr=False)
    patient_mrn: str | None = field(default=None, repr=False)
    # Whatever followed a name or MRN label, valid or not: to redact from any text.
    phi_fragments: tuple[str, ...] = field(default=(), repr=False)


@dataclass
class _Page:
    number: int
    words: list[Word]
    images: list[PageImage]
    pixels: NDArray[np.uint8] | None = None  # rendered, when the page has no text layer
    lines: list[Line] = field(default_factory=list)
    ocr: bool = False


def _text_words(pdf: bytes) -> list[list[Word]]:
    try:
        document = pdfplumber.open(io.BytesIO(pdf))
    except Exception as exc:  # pdfminer raises many types for a broken file
        raise ReportUnreadable("PDF report could not be read") from exc
    with document:
        try:
            pages = list(document.pages)
        except Exception as exc:
            raise ReportUnreadable("PDF report could not be read") from exc
        if not pages:
            raise ReportUnreadable("PDF report has no pages")
        found = []
        for number, page in enumerate(pages, start=1):
            try:
                words = page.extract_words()
            except Exception as exc:
                raise PageUnreadable(number) from exc
            found.append(
                [
                    Word(
                        text=str(w["text"]),
                        box=(float(w["x0"]), float(w["top"]), float(w["x1"]), float(w["bottom"])),
                    )
                    for w in words
                ]
            )
        return found


def _pdfium_pages(pdf: bytes, text: list[list[Word]]) -> list[_Page]:
    """Images of every page, and a rendering of each page without text (under the lock)."""
    pages = []
    with _PDFIUM:
        try:
            document = pdfium.PdfDocument(pdf)
        except pdfium.PdfiumError as exc:
            raise ReportUnreadable("PDF report could not be read") from exc
        try:
            if len(document) != len(text):
                raise ReportUnreadable("PDF report could not be read")
            for index, words in enumerate(text):
                number = index + 1
                try:
                    page = document[index]
                    images = page_images(page)
                    pixels = None
                    if sum(len(w.text) for w in words) < _TEXT_LAYER_CHARACTERS:
                        bitmap = page.render(scale=DPI / 72)
                        pixels = np.array(bitmap.to_numpy(), dtype=np.uint8)  # a copy
                except (pdfium.PdfiumError, OSError, ValueError) as exc:
                    raise PageUnreadable(number) from exc
                pages.append(_Page(number=number, words=words, images=images, pixels=pixels))
        finally:
            document.close()
    return pages


def _ocr(page: _Page, *, tesseract: str) -> None:
    assert page.pixels is not None
    scale = DPI / 72
    pictures = [i.box for i in page.images if i.kind == "tile"]
    grey = prepare_page(
        page.pixels,
        scale=scale,
        pictures=pictures,
        blanks=[i.box for i in page.images if i.kind == "logo"],
    )
    grey, strip_top, spans = with_badge_strip(grey, pictures, scale=scale)
    try:
        lines = parse_tsv(run_tesseract(grey, binary=tesseract), scale=scale)
    except TesseractFailed as exc:
        raise PageUnreadable(page.number, f"OCR failed: {exc}") from exc
    in_strip = [line.top * scale >= strip_top for line in lines]
    page.lines = [line for line, strip in zip(lines, in_strip, strict=True) if not strip]
    strip_words = [w for line, s in zip(lines, in_strip, strict=True) if s for w in line.words]
    badges = badges_in(strip_words, spans, scale=scale)
    page.ocr = True
    # The badges as words on their tiles, in place of what the page's OCR saw there.
    page.words = [
        word
        for line in page.lines
        for word in line.words
        if not any(words_within([word], box) for box in pictures)
    ] + [
        Word(text=text, box=box, confidence=confidence)
        for (text, confidence), box in zip(badges, pictures, strict=True)
        if text
    ]


def _report_field(candidate: Candidate) -> ReportField:
    value = candidate.value
    assert value is None or isinstance(value, str | int | float | bool | tuple)
    return ReportField(
        value=None if candidate.needs_review else value,
        confidence=round(max(0.0, min(1.0, candidate.confidence)), 3),
        needs_review=candidate.needs_review,
    )


def _eye_labels(tiles: Sequence[ReportTile]) -> Candidate:
    if not tiles or any(t.eye is None for t in tiles):
        return Candidate.failed(min((t.confidence for t in tiles), default=0.0))
    confidence = min(t.confidence for t in tiles)
    if confidence < MIN_CONFIDENCE:
        return Candidate.failed(confidence)
    return Candidate(tuple(str(t.eye) for t in tiles), confidence)


def _applies(field_name: str, kinds: Sequence[str]) -> bool:
    if field_name in _DR_FIELDS:
        return "dr" in kinds
    if field_name in _GLAUCOMA_FIELDS:
        return "glaucoma" in kinds
    return True


def _report_kind(kinds: Sequence[str]) -> ReportKind:
    has_dr, has_glaucoma = "dr" in kinds, "glaucoma" in kinds
    if has_dr and has_glaucoma:
        return "combined"
    return "dr" if has_dr else "glaucoma" if has_glaucoma else "unknown"


def read_report(pdf: bytes, *, tesseract: str = "tesseract") -> ReportReading:
    """Everything the report says. Raises `ReportUnreadable` (or `PageUnreadable`) with a
    reason for the user; `pdf_parser.ocr.TesseractMissing` when OCR is needed but missing."""
    pages = _pdfium_pages(pdf, _text_words(pdf))
    for page in pages:
        if page.pixels is None:
            page.lines = group_lines(page.words)
        else:
            _ocr(page, tesseract=tesseract)
            page.pixels = None

    kinds: list[str] = []
    readings: list[Mapping[str, Candidate]] = []
    tiles: list[ReportTile] = []
    for page in pages:
        kind, found = read_page(page.lines)
        kinds.append(kind)
        readings.append(found)
        if kind == "dr":
            tiles.extend(read_tiles(page.images, page.words, page=page.number))

    fields: dict[str, ReportField] = {}
    for field_name in FIELD_NAMES:
        if not _applies(field_name, kinds):
            candidate = Candidate(None, 0.0)  # e.g. the VCDR of a DR-only report
        elif field_name == "eye_labels":
            candidate = _eye_labels(tiles)
        else:
            candidate = combine(readings, field_name)
        if field_name == "doctor" and candidate.value == "N/A":
            candidate = Candidate(None, candidate.confidence)  # printed "N/A": no doctor
        fields[field_name] = _report_field(candidate)

    patient_name, mrn = combine(readings, "name"), combine(readings, "mrn")
    return ReportReading(
        page_kinds=tuple(kinds),
        report_kind=_report_kind(kinds),
        method="ocr" if any(page.ocr for page in pages) else "text",
        fields=fields,
        tiles=tuple(tiles),
        raw_text="\n\n".join("\n".join(line.text for line in page.lines) for page in pages),
        patient_name=None if patient_name.needs_review else str(patient_name.value),
        patient_mrn=None if mrn.needs_review else str(mrn.value),
        phi_fragments=tuple(dict.fromkeys(f for page in pages for f in phi_fragments(page.lines))),
    )
