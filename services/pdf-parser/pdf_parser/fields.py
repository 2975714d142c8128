"""From a page's lines to the report's values, by label (pure).

Nothing here depends on where a value sits on the page: OCR merges the band's three columns
into one line (`Patient MRN: 12345678 Gender: Female Age: 65`), so a value runs from its
label to the next known label on the same line, never to the end of the line. OCR's usual
slips are tolerated: `;` for `:`, stray `|` or `—` around values, `AlIMS` for `AIIMS`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pdf_parser.layout import Line

__all__ = [
    "MIN_CONFIDENCE",
    "Candidate",
    "PageKind",
    "classify_dr",
    "classify_glaucoma",
    "combine",
    "labelled_values",
    "page_kind",
    "phi_fragments",
    "read_page",
]

PageKind = str  # "dr" | "glaucoma" | "unknown"
# Below this word confidence (Tesseract, 0-1) a value is not trusted. Measured on synthetic
# Remidio pages at 200 DPI: correctly read words score 0.85-0.97, smeared ones under 0.5.
MIN_CONFIDENCE = 0.6

# Longer labels first: at one position the alternation takes the first that matches.
_LABELS = {
    "patient_mrn": r"patient\s*mrn",
    "patient_name": r"patient\s*name",
    "result_dr": r"result\s*dr",
    "mrn": r"mrn",
    "name": r"name",
    "gender": r"gender",
    "age": r"age",
    "doctor": r"doctor",
    "date": r"date",
    "warning": r"warning",
}
_LABEL = re.compile(
    r"(?<![A-Za-z])(?:" + "|".join(f"(?P<{k}>{p})" for k, p in _LABELS.items()) + r")\b\s*[:;]?",
    re.IGNORECASE,
)
_STRAY = " \t|_:;\u2014\u2013"  # stray bars, em and en dashes
_VCDR = re.compile(
    r"VCDR\s*[-\u2013\u2014:=~]*\s*(\d+[.,]\d+)\s*\(\s*([A-Za-z](?:[A-Za-z ]*[A-Za-z])?)\s*\)", re.I
)
_DATE = re.compile(r"(\d{1,2})\s*([A-Za-z]{3})[A-Za-z]*\.?\s*(\d{4})")
_MONTHS = {
    month: number
    for number, month in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_NAME = re.compile(r"[A-Za-z][A-Za-z .'-]*")
_NOT_APPLICABLE = re.compile(r"n\s*/?\s*a\.?", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """One reading of a field: `value` None when it failed (then `needs_review`)."""

    value: object
    confidence: float
    needs_review: bool = False

    @classmethod
    def failed(cls, confidence: float = 0.0) -> Candidate:
        return cls(None, confidence, True)


def page_kind(lines: Sequence[Line]) -> PageKind:
    text = " ".join(line.text for line in lines).lower()
    if "glaucoma screening" in text or "glaucoma report" in text:
        return "glaucoma"
    if "retinopathy" in text:
        return "dr"
    return "unknown"


def _fix_capitals(text: str) -> str:
    """`AlIMS` → `AIIMS`: an 'l' among capitals is an 'I' that OCR misread."""

    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        letters = [c for c in word if c.isalpha() and c != "l"]
        if len(letters) >= 2 and all(c.isupper() for c in letters):
            return word.replace("l", "I")
        return word

    return re.sub(r"[A-Za-z]+", fix, text)


def _clean(text: str) -> str:
    return text.strip(_STRAY).strip()


def labelled_values(line: Line) -> dict[str, tuple[str, float]]:
    """Each label on the line with the text up to the next label (cleaned) and its confidence."""
    text = line.text
    matches = list(_LABEL.finditer(text))
    found: dict[str, tuple[str, float]] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        raw = text[match.end() : end]
        value = _clean(raw)
        if not value:
            found.setdefault(str(match.lastgroup), ("", 0.0))
            continue
        start = match.end() + raw.find(value)
        found.setdefault(str(match.lastgroup), (value, line.confidence(start, start + len(value))))
    return found


def _checked(value: object, confidence: float) -> Candidate:
    if value is None:
        return Candidate.failed(confidence)
    if confidence < MIN_CONFIDENCE:
        return Candidate.failed(confidence)
    return Candidate(value, confidence)


def _gender(text: str) -> object:
    word = text.strip(" .").lower()
    return {"male": "Male", "female": "Female", "other": "Other"}.get(word)


def _age(text: str) -> object:
    if re.fullmatch(r"\d{1,3}", text) and 0 <= int(text) <= 120:
        return int(text)
    return None


def _date(text: str) -> object:
    match = _DATE.fullmatch(text.strip())
    if not match:
        return None
    month = _MONTHS.get(match.group(2).lower())
    if month is None:
        return None
    try:
        return dt.date(int(match.group(3)), month, int(match.group(1))).isoformat()
    except ValueError:
        return None


def _mrn(text: str) -> object:
    digits = re.sub(r"\s+", "", text)
    return digits if re.fullmatch(r"\d{8}", digits) else None


def _name(text: str) -> object:
    cleaned = " ".join(text.split())
    return cleaned if _NAME.fullmatch(cleaned) else None


def classify_dr(sentence: str) -> bool | None:
    """True for "Signs of DR detected", False for "No signs of DR"; None when neither."""
    lowered = " ".join(sentence.lower().split())
    if re.search(r"\bno\s+s\w*\s+of\s+dr\b", lowered):
        return False
    if re.search(r"\bs\w*\s+of\s+dr\b.*\bdet\w*", lowered):
        return True
    return None


def classify_glaucoma(sentence: str) -> bool | None:
    """Referable or not, also as the vendor misspells it ("Refferable", "Referrable")."""
    lowered = " ".join(sentence.lower().split())
    referable = r"r\w*f\w*r\w*bl\w*\s+glaucoma"
    if re.search(r"\bno[nt]?\b[\s-]*" + referable, lowered):
        return False
    if re.search(r"\b" + referable, lowered):
        return True
    return None


def _vcdr(lines: Sequence[Line]) -> dict[str, Candidate]:
    """Each eye's VCDR: a `VCDR - 0.70 (Note)` belongs to the nearest eye label above it."""
    anchors: list[tuple[str, float, float]] = []  # (eye, x, top)
    for line in lines:
        words = line.words
        for first, second in itertools.pairwise(words):
            if second.text.lower().startswith("eye"):
                eye = {"right": "right", "left": "left"}.get(first.text.lower().strip(_STRAY))
                if eye:
                    anchors.append((eye, first.box[0], first.box[1]))
    found: dict[str, Candidate] = {}
    for line in lines:
        for match in _VCDR.finditer(line.text):
            spans = [w for s, e, w in line.spans() if s < match.end() and e > match.start()]
            x, top = spans[0].box[0], spans[0].box[1]
            above = [a for a in anchors if a[2] < top]
            if not above:
                continue
            eye = min(above, key=lambda a: (abs(a[1] - x), top - a[2]))[0]
            confidence = line.confidence(match.start(), match.end())
            number = match.group(1).replace(",", ".")
            value = float(number) if re.fullmatch(r"\d\.\d{2}", number) else None
            if value is not None and not 0 <= value <= 1:
                value = None
            found.setdefault(f"vcdr_{eye}", _checked(value, confidence))
            note = match.group(2).strip()
            found.setdefault(f"vcdr_{eye}_note", _checked(note or None, confidence))
    return found


def _site_header(lines: Sequence[Line], title: int | None) -> Candidate:
    if title is None:
        return Candidate.failed()
    header = [line for line in lines[:title] if any(c.isalnum() for c in line.text)]
    if len(header) != 2:
        return Candidate.failed()
    text = "\n".join(_fix_capitals(_clean(line.text)) for line in header)
    return _checked(text, min(min(w.confidence for w in line.words) for line in header))


def phi_fragments(lines: Sequence[Line]) -> list[str]:
    """Whatever follows a name or MRN label, valid or not: text to redact."""
    labels = {"patient_name", "name", "patient_mrn", "mrn"}
    return [
        text
        for line in lines
        for label, (text, _) in labelled_values(line).items()
        if label in labels and text
    ]


def read_page(lines: Sequence[Line]) -> tuple[PageKind, dict[str, Candidate]]:
    """The page's kind and what it says, by field name (`name` and `mrn` included here: the
    caller keeps them apart)."""
    kind = page_kind(lines)
    found: dict[str, Candidate] = {}
    values: dict[str, tuple[str, float]] = {}
    for line in lines:
        for label, read in labelled_values(line).items():
            values.setdefault(label, read)

    def field(label: str, parse: Callable[[str], object]) -> None:
        if label not in values:
            return
        text, confidence = values[label]
        found_value = parse(text) if text else None
        found[_FIELD_OF_LABEL.get(label, label)] = _checked(found_value, confidence)

    field("patient_mrn" if kind == "dr" else "mrn", _mrn)
    field("patient_name" if kind == "dr" else "name", _name)
    field("gender", _gender)
    field("age", _age)
    field("date", _date)
    if "doctor" in values:
        text, confidence = values["doctor"]
        if _NOT_APPLICABLE.fullmatch(text):
            found["doctor"] = _checked("N/A", confidence)  # printed "N/A": no doctor
        else:
            found["doctor"] = _checked(_name(text), confidence)

    if kind == "dr":
        title = next((i for i, ln in enumerate(lines) if "retinopathy" in ln.text.lower()), None)
        found["site_header"] = _site_header(lines, title)
        if "result_dr" in values:
            text, confidence = values["result_dr"]
            found["dr_result"] = _checked(text or None, confidence)
            referable = classify_dr(text) if text else None
            found["dr_referable"] = _checked(referable, confidence)
        if "warning" in values:
            text, confidence = values["warning"]
            found["dr_warning"] = _checked(text or None, confidence)
        else:
            found["dr_warning"] = Candidate(None, 1.0)
    elif kind == "glaucoma":
        title = next((i for i, ln in enumerate(lines) if "screening" in ln.text.lower()), None)
        found["site_header"] = _site_header(lines, title)
        found.update(_vcdr(lines))
        for index, line in enumerate(lines):
            if index != title and classify_glaucoma(line.text) is not None:
                text = _clean(line.text)
                confidence = min(w.confidence for w in line.words)
                found["glaucoma_result"] = _checked(text, confidence)
                found["glaucoma_referable"] = _checked(classify_glaucoma(text), confidence)
                break
    return kind, found


_FIELD_OF_LABEL = {"patient_mrn": "mrn", "patient_name": "name", "date": "report_date"}


def combine(readings: Sequence[Mapping[str, Candidate]], name: str) -> Candidate:
    """One field read on several pages: the agreed value; None (for review) if they disagree
    or none could be read."""
    candidates = [r[name] for r in readings if name in r]
    if not candidates:
        return Candidate.failed()
    good = [c for c in candidates if not c.needs_review]
    if not good:
        return Candidate.failed(max(c.confidence for c in candidates))
    values = {repr(c.value) for c in good}
    if len(values) > 1:
        return Candidate.failed()
    return max(good, key=lambda c: c.confidence)
