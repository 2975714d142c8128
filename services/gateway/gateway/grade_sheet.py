"""Reading a pre-graded upload's sheet of known grades (.xlsx or .csv): its header row, the
user's column mapping, and every row checked against the uploaded files.

Pure: bytes in, a `SheetResult` out; nothing here touches the network, the disk or the store.
Rows are streamed (openpyxl's read-only mode, the csv module over the bytes), so only the
grades of the matching rows and the problems are held; a sheet may not have more than
`MAX_ROWS` rows below its header.

Decisions (what a hospital's grading export looks like, and what is safe to accept):
- File names match case-insensitively, ignoring any folder part (`/` or `\\`) and Unicode
  composition, because exports write `C:\\camp\\IMG_001.JPG` for the uploaded `img_001.jpg`.
- A row with any refused value is left out whole (each bad value is reported); a later row for
  a file already seen is reported as a duplicate and ignored, the first row stands.
- Blank grade cells mean "not graded" and are left out of the row's grades; a row blank in
  every mapped column is skipped.
- `dr_grade` takes the ICDR numbers 0-4 as numbers or text ("2", 2, 2.0); the NHS "R2"
  scale is refused, because its R3 is not ICDR 3.
- `vcdr_*` take a decimal comma too ("0,4"), as ;-separated European CSVs write it.
- Custom fields are named `custom:<name>` in the mapping and kept as text.
- The header is the first non-empty row of the first visible worksheet (templates hide their
  lists sheet first); a first row of numbers only is data, so the sheet has no header.
- CSV must be UTF-8 (a BOM is fine); the delimiter is whichever of `,` and `;` the header
  row holds more of.
"""

from __future__ import annotations

import csv
import io
import math
import unicodedata
import zipfile
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, time
from types import MappingProxyType
from typing import Literal

import openpyxl
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

__all__ = [
    "CUSTOM_PREFIX",
    "GRADE_FIELDS",
    "MAX_ROWS",
    "MAX_TEXT_LENGTH",
    "GradeField",
    "GradeSheetError",
    "GradeValue",
    "Mapping",
    "MappingError",
    "RowProblem",
    "SheetError",
    "SheetResult",
    "read_header",
    "read_rows",
]

GradeValue = int | float | bool | str
_Rows = Generator[tuple[int, Sequence[object]], None, None]
GradeKind = Literal["icdr", "yes_no", "ratio", "amd", "text"]

CUSTOM_PREFIX = "custom:"
MAX_ROWS = 10_000
MAX_TEXT_LENGTH = 2_000
# A 10,000-row sheet unpacks to a few MB; a ZIP that claims far more is a bomb, not grades.
_MAX_UNPACKED_BYTES = 100 * 1024 * 1024
_MAX_CUSTOM_NAME = 64

_WRONG_TYPE = "The grades file must be .xlsx or .csv"
_BROKEN = "The grades file could not be read: it is not a valid Excel workbook"
_ENCRYPTED = "The grades file is password-protected; please save it without a password"
_LEGACY = "The grades file is an Excel 97-2003 workbook; please save it as .xlsx"
_TOO_BIG = "The grades file is too large once unpacked; is it really a sheet of grades?"
_NOT_UTF8 = 'The grades file could not be read: it is not UTF-8 text (save it as "CSV UTF-8")'
_BAD_CSV = "The grades file could not be read: it is not valid CSV text"
_EMPTY = "The grades file is empty"
_NO_HEADER = (
    "The grades file has no header row: its first row must name the columns "
    "(for example file name, DR grade)"
)
_NO_ROWS = "The grades file has no rows below its header row"
_TOO_MANY = f"The grades file has more than {MAX_ROWS:,} rows; please split it"

_ZIP_MAGIC = b"PK\x03\x04"
# Excel encrypts an .xlsx by wrapping it in an OLE2 compound file (MS-OFFCRYPTO); an
# Excel 97-2003 .xls is the same container with a "Workbook" stream and no EncryptedPackage.
_CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")
_LEGACY_STREAMS = ("Workbook".encode("utf-16-le"), "Book\x00".encode("utf-16-le"))


class GradeSheetError(Exception):
    """A grades file or mapping refused as a whole; `reason` is said to the user as is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SheetError(GradeSheetError):
    """The grades file cannot be read: wrong type, broken, encrypted, empty, too big."""


class MappingError(GradeSheetError):
    """The column mapping is malformed or names columns the sheet does not have."""


@dataclass(frozen=True, kw_only=True)
class GradeField:
    """One grade a sheet may carry: `label` for messages, `allowed` said in them, `choices`
    the canonical words for a select (empty for numbers and text)."""

    name: str
    label: str
    kind: GradeKind
    allowed: str
    choices: tuple[str, ...] = ()


_YES_NO = ("yes", "no")
_AMD = ("none", "early", "intermediate", "advanced")

GRADE_FIELDS: MappingProxyType[str, GradeField] = MappingProxyType(
    {
        f.name: f
        for f in (
            GradeField(name="dr_grade", label="DR grade", kind="icdr", allowed="0-4"),
            GradeField(
                name="dme", label="DME", kind="yes_no", allowed="yes or no", choices=_YES_NO
            ),
            GradeField(
                name="glaucoma_suspect",
                label="Glaucoma suspicion",
                kind="yes_no",
                allowed="yes or no",
                choices=_YES_NO,
            ),
            GradeField(name="vcdr_right", label="VCDR right", kind="ratio", allowed="0-1"),
            GradeField(name="vcdr_left", label="VCDR left", kind="ratio", allowed="0-1"),
            GradeField(
                name="amd",
                label="AMD",
                kind="amd",
                allowed="one of none, early, intermediate, advanced",
                choices=_AMD,
            ),
            GradeField(
                name="gradable",
                label="Gradable",
                kind="yes_no",
                allowed="yes or no",
                choices=_YES_NO,
            ),
            GradeField(
                name="notes",
                label="Notes",
                kind="text",
                allowed=f"at most {MAX_TEXT_LENGTH:,} characters",
            ),
        )
    }
)


class RowProblem(BaseModel):
    """One row that cannot be used: `row` as Excel numbers it (1-based, header included),
    `filename` as the sheet wrote it (None when blank)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    row: int
    filename: str | None
    reason: str


class SheetResult(BaseModel):
    """`grades`: uploaded file name (as uploaded) → field → normalised value, for the rows
    with no problem; `images_without_row`: uploaded files no row names, in upload order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grades: dict[str, dict[str, GradeValue]]
    problems: list[RowProblem]
    images_without_row: list[str]


def _column_key(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip().casefold()


class Mapping(BaseModel):
    """Which column holds the file names and which hold each grade field (a known name from
    `GRADE_FIELDS` or `custom:<name>`), as the API receives it:
    `{"filename": "<column>", "grades": {"dr_grade": "<column>", ...}}`.
    Columns match the header case-insensitively, ignoring surrounding spaces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    filename: str
    grades: dict[str, str]

    @field_validator("filename")
    @classmethod
    def _filename_named(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("The mapping must name the column of file names")
        return value

    @field_validator("grades")
    @classmethod
    def _grades_known(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("The mapping must name at least one grade column")
        cleaned: dict[str, str] = {}
        for field, column in value.items():
            field = field.strip()
            if field.startswith(CUSTOM_PREFIX):
                custom = field.removeprefix(CUSTOM_PREFIX).strip()
                if not custom or len(custom) > _MAX_CUSTOM_NAME or not custom.isprintable():
                    raise ValueError(
                        f"A custom grade field needs a name of 1-{_MAX_CUSTOM_NAME} "
                        f"characters after {CUSTOM_PREFIX}, not {field!r}"
                    )
                field = CUSTOM_PREFIX + custom
            elif field not in GRADE_FIELDS:
                raise ValueError(
                    f"Unknown grade field: {field} (known: {', '.join(GRADE_FIELDS)}; "
                    f"or name your own as {CUSTOM_PREFIX}<name>)"
                )
            if not column.strip():
                raise ValueError(f"The mapping must name a column for {field}")
            if field in cleaned:
                raise ValueError(f"The grade field {field} is mapped more than once")
            cleaned[field] = column.strip()
        return cleaned

    @model_validator(mode="after")
    def _columns_used_once(self) -> Mapping:
        used: dict[str, str] = {_column_key(self.filename): "the file name"}
        for field, column in self.grades.items():
            first = used.setdefault(_column_key(column), field)
            if first != field:
                raise ValueError(f"Column {column} is mapped to both {first} and {field}")
        return self

    @classmethod
    def from_json(cls, text: str | bytes) -> Mapping:
        """The mapping from the API's JSON form field; MappingError says what is wrong."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise MappingError(_mapping_reason(exc)) from exc

    def columns(self, header: Sequence[str]) -> tuple[int, dict[str, int]]:
        """The positions of the file-name column and of each grade field's column in the
        header (as `read_header` returns it, or with blanks kept at their positions)."""
        positions: dict[str, list[int]] = {}
        for index, name in enumerate(header):
            if name.strip():
                positions.setdefault(_column_key(name), []).append(index)

        def position(column: str) -> int:
            found = positions.get(_column_key(column), [])
            if not found:
                raise MappingError(f"Column not found in the grades file's header: {column}")
            if len(found) > 1:
                raise MappingError(
                    f"Column {column} appears more than once in the grades file's header; "
                    "please rename one"
                )
            return found[0]

        return position(self.filename), {f: position(c) for f, c in self.grades.items()}


def _mapping_reason(exc: ValidationError) -> str:
    reasons = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "json_invalid":
            reasons.append("The mapping is not valid JSON")
        elif kind == "model_type":
            reasons.append('The mapping must be a JSON object: {"filename": ..., "grades": {...}}')
        elif kind == "missing":
            reasons.append(f"The mapping is missing {where}")
        elif kind == "extra_forbidden":
            reasons.append(f"The mapping has an unknown key: {where}")
        elif kind == "value_error":
            reasons.append(str(error["ctx"]["error"]))
        elif where.startswith("grades"):
            reasons.append("The mapping's grades must map field names to column names")
        else:
            reasons.append(f"The mapping's {where} must be a column name")
    return "; ".join(dict.fromkeys(reasons))


# --- reading cells -------------------------------------------------------------------------


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: object) -> str:
    """A cell as the user sees it: 12.0 is "12", dates in ISO form."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value).strip()


def _looks_numeric(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float | datetime | date | time):
        return True
    try:
        float(str(value).strip().replace(",", "."))
    except ValueError:
        return False
    return True


def _suffix(filename: str) -> str:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _rows(data: bytes, filename: str) -> _Rows:
    """Every non-blank row of the first sheet with its row number as Excel shows it."""
    suffix = _suffix(filename)
    if suffix == "xlsx":
        return _xlsx_rows(data)
    if suffix == "csv":
        return _csv_rows(data)
    raise SheetError(_WRONG_TYPE)


def _check_xlsx_container(data: bytes) -> None:
    if data.startswith(_CFB_MAGIC):
        if _ENCRYPTED_PACKAGE not in data and any(s in data for s in _LEGACY_STREAMS):
            raise SheetError(_LEGACY)
        raise SheetError(_ENCRYPTED)
    if not data.startswith(_ZIP_MAGIC):
        raise SheetError(_BROKEN)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SheetError(_BROKEN) from exc
    if unpacked > _MAX_UNPACKED_BYTES:
        raise SheetError(_TOO_BIG)


def _xlsx_rows(data: bytes) -> _Rows:
    _check_xlsx_container(data)
    # openpyxl fails on a damaged workbook with whatever its parsers raise (KeyError for a
    # missing part, ParseError, ValueError, TypeError, ...); each means "not a workbook".
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:
        raise SheetError(_BROKEN) from exc
    try:
        sheets = [s for s in workbook.worksheets if s.sheet_state == "visible"]
        if not sheets:
            raise SheetError(_EMPTY)
        sheet = sheets[0]
        # The <dimension> some writers leave stale would cut rows off; read to the end.
        sheet.reset_dimensions()
        cells: Iterator[Sequence[object]] = sheet.iter_rows(min_row=1, values_only=True)
        number = 0
        while True:
            try:
                values = next(cells)
            except StopIteration:
                return
            except Exception as exc:
                raise SheetError(_BROKEN) from exc
            number += 1  # read-only mode yields a blank tuple for every missing row
            if not all(_blank(v) for v in values):
                yield number, values
    finally:
        workbook.close()


def _delimiter(data: bytes) -> str:
    sample = data[:65536].decode("utf-8-sig", errors="ignore")
    line = next((line for line in sample.splitlines() if line.strip()), "")
    unquoted = "".join(part for i, part in enumerate(line.split('"')) if i % 2 == 0)
    return ";" if unquoted.count(";") > unquoted.count(",") else ","


def _csv_rows(data: bytes) -> _Rows:
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=_delimiter(data))
    number = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise SheetError(_NOT_UTF8) from exc
        except csv.Error as exc:
            raise SheetError(_BAD_CSV) from exc
        number += 1  # Excel shows one row per record, a quoted line break included
        if not all(_blank(v) for v in values):
            yield number, values


def _header(values: Sequence[object]) -> list[str]:
    names = [_text(v) for v in values]
    if all(_looks_numeric(v) for v in values if not _blank(v)):
        raise SheetError(_NO_HEADER)
    while names and not names[-1]:
        names.pop()
    return names


def read_header(data: bytes, filename: str) -> list[str]:
    """The column names of the first non-empty row of the first (visible) sheet, in order,
    blank cells left out. SheetError when the file cannot be read or has no header."""
    with closing(_rows(data, filename)) as rows:
        first = next(rows, None)
    if first is None:
        raise SheetError(_EMPTY)
    return [name for name in _header(first[1]) if name]


# --- checking values -----------------------------------------------------------------------


class _Refused(Exception):
    pass


def _shown(value: object) -> str:
    text = _text(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _icdr(value: object) -> int:
    number: float
    if isinstance(value, bool):
        raise _Refused
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(str(value).strip().replace(",", "."))
        except ValueError:
            raise _Refused from None
    if not number.is_integer() or not 0 <= number <= 4:
        raise _Refused
    return int(number)


_YES = {"yes", "y", "true", "1"}
_NO = {"no", "n", "false", "0"}


def _yes_no(value: object) -> bool:
    if isinstance(value, bool):
        return value
    word = _text(value).casefold()
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise _Refused


def _ratio(value: object) -> float:
    if isinstance(value, bool):
        raise _Refused
    try:
        number = float(value if isinstance(value, int | float) else _text(value).replace(",", "."))
    except ValueError:
        raise _Refused from None
    if not math.isfinite(number) or not 0 <= number <= 1:
        raise _Refused
    return number


def _amd(value: object) -> str:
    word = _text(value).casefold()
    if isinstance(value, str) and word in _AMD:
        return word
    raise _Refused


def _free_text(value: object) -> str:
    text = _text(value)
    if len(text) > MAX_TEXT_LENGTH:
        raise _Refused
    return text


_NORMALISE: dict[GradeKind, Callable[[object], GradeValue]] = {
    "icdr": _icdr,
    "yes_no": _yes_no,
    "ratio": _ratio,
    "amd": _amd,
    "text": _free_text,
}
_CUSTOM_FIELD = GradeField(
    name="custom", label="", kind="text", allowed=f"at most {MAX_TEXT_LENGTH:,} characters"
)


def _grade_value(field: str, value: object) -> GradeValue:
    """The value normalised, or _Refused with the sentence the user reads."""
    spec = GRADE_FIELDS.get(field) or _CUSTOM_FIELD
    try:
        return _NORMALISE[spec.kind](value)
    except _Refused:
        label = spec.label or field.removeprefix(CUSTOM_PREFIX)
        if spec.kind == "text":
            raise _Refused(f"{label} must be {spec.allowed}") from None
        raise _Refused(f"{label} must be {spec.allowed}, not {_shown(value)}") from None


def _cell(values: Sequence[object], index: int) -> object:
    return values[index] if index < len(values) else None


def _file_key(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return unicodedata.normalize("NFC", base).strip().casefold()


def read_rows(
    data: bytes, filename: str, mapping: Mapping, *, uploaded: Collection[str]
) -> SheetResult:
    """Every row of the grades file checked against the mapping and the uploaded file names.
    SheetError for a file that cannot be read; MappingError for columns it does not have."""
    by_key: dict[str, list[str]] = {}
    for name in dict.fromkeys(uploaded):
        by_key.setdefault(_file_key(name), []).append(name)

    grades: dict[str, dict[str, GradeValue]] = {}
    problems: list[RowProblem] = []
    first_row: dict[str, int] = {}
    mentioned: set[str] = set()
    with closing(_rows(data, filename)) as rows:
        first = next(rows, None)
        if first is None:
            raise SheetError(_EMPTY)
        name_at, field_at = mapping.columns(_header(first[1]))
        count = 0
        for number, values in rows:
            count += 1
            if count > MAX_ROWS:
                raise SheetError(_TOO_MANY)
            written = _text(_cell(values, name_at))
            if not written:
                if not all(_blank(_cell(values, i)) for i in field_at.values()):
                    problems.append(RowProblem(row=number, filename=None, reason="Blank file name"))
                continue
            key = _file_key(written)
            matches = by_key.get(key, [])
            if not matches:
                reason = f"File not among the uploaded files: {written}"
                problems.append(RowProblem(row=number, filename=written, reason=reason))
                continue
            mentioned.add(key)
            if len(matches) > 1:
                reason = f"File name matches more than one uploaded file: {written}"
                problems.append(RowProblem(row=number, filename=written, reason=reason))
                continue
            if key in first_row:
                reason = f"Duplicate row for {written} (first on row {first_row[key]})"
                problems.append(RowProblem(row=number, filename=written, reason=reason))
                continue
            first_row[key] = number

            record: dict[str, GradeValue] = {}
            refused = False
            for field, index in field_at.items():
                value = _cell(values, index)
                if _blank(value):
                    continue
                try:
                    record[field] = _grade_value(field, value)
                except _Refused as exc:
                    refused = True
                    problems.append(RowProblem(row=number, filename=written, reason=str(exc)))
            if not refused:
                grades[matches[0]] = record
        if count == 0:
            raise SheetError(_NO_ROWS)

    without_row = [name for name in dict.fromkeys(uploaded) if _file_key(name) not in mentioned]
    return SheetResult(grades=grades, problems=problems, images_without_row=without_row)
