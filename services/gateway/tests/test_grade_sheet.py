"""The pre-graded upload's sheet of known grades: its header, the column mapping, every row
checked against the uploaded files with its row number, and the files refused whole."""

from __future__ import annotations

import pytest

from gateway.grade_sheet import (
    GRADE_FIELDS,
    MAX_ROWS,
    GradeValue,
    Mapping,
    MappingError,
    RowProblem,
    SheetError,
    read_header,
    read_rows,
)
from testkit.grade_sheets import broken_xlsx, csv_sheet, encrypted_xlsx, legacy_xls, xlsx_sheet

HEADER = [
    "File name",
    "DR grade",
    "DME",
    "Glaucoma",
    "VCDR R",
    "VCDR L",
    "AMD",
    "Gradable",
    "Notes",
]
ALL_FIELDS = Mapping(
    filename="File name",
    grades={
        "dr_grade": "DR grade",
        "dme": "DME",
        "glaucoma_suspect": "Glaucoma",
        "vcdr_right": "VCDR R",
        "vcdr_left": "VCDR L",
        "amd": "AMD",
        "gradable": "Gradable",
        "notes": "Notes",
    },
)


def one_field(field: str) -> Mapping:
    return Mapping(filename="File name", grades={field: "Value"})


def value_of(field: str, value: object) -> tuple[dict[str, GradeValue] | None, list[str]]:
    sheet = xlsx_sheet([["File name", "Value"], ["img.jpg", value]])
    result = read_rows(sheet, "grades.xlsx", one_field(field), uploaded=["img.jpg"])
    return result.grades.get("img.jpg"), [p.reason for p in result.problems]


# --- the header row --------------------------------------------------------------------------


def test_the_header_of_a_workbook_is_its_first_non_empty_row() -> None:
    sheet = xlsx_sheet([[], [None, None], ["File name", " DR grade ", None, "Notes"], ["a.jpg", 1]])
    assert read_header(sheet, "grades.xlsx") == ["File name", "DR grade", "Notes"]


def test_the_header_comes_from_the_first_visible_sheet() -> None:
    sheet = xlsx_sheet([["File name", "DR grade"]], hidden_first=[["yes"], ["no"]])
    assert read_header(sheet, "grades.XLSX") == ["File name", "DR grade"]


def test_the_header_of_a_comma_separated_csv_is_read() -> None:
    sheet = csv_sheet([["File name", "DR grade", "Notes"], ["a.jpg", "2", "fine, clear"]])
    assert read_header(sheet, "grades.csv") == ["File name", "DR grade", "Notes"]


def test_the_header_of_a_semicolon_separated_csv_with_a_bom_is_read() -> None:
    sheet = csv_sheet(
        [["File name", "DR grade", "VCDR, right"], ["a.jpg", "2", "0,4"]], delimiter=";", bom=True
    )
    assert read_header(sheet, "grades.csv") == ["File name", "DR grade", "VCDR, right"]


def test_a_first_row_of_numbers_is_not_a_header() -> None:
    with pytest.raises(SheetError) as refused:
        read_header(xlsx_sheet([[1, 2.5, "3"], ["a.jpg", 1, 2]]), "grades.xlsx")
    assert refused.value.reason == (
        "The grades file has no header row: its first row must name the columns "
        "(for example file name, DR grade)"
    )


# --- files refused whole ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "filename", "reason"),
    [
        (xlsx_sheet([["a"]]), "grades.xls", "The grades file must be .xlsx or .csv"),
        (b"File name\n", "grades.txt", "The grades file must be .xlsx or .csv"),
        (b"File name\n", "grades", "The grades file must be .xlsx or .csv"),
        (
            broken_xlsx(),
            "grades.xlsx",
            "The grades file could not be read: it is not a valid Excel workbook",
        ),
        (
            b"File name,DR grade\n",
            "grades.xlsx",
            "The grades file could not be read: it is not a valid Excel workbook",
        ),
        (
            encrypted_xlsx(),
            "grades.xlsx",
            "The grades file is password-protected; please save it without a password",
        ),
        (
            legacy_xls(),
            "grades.xlsx",
            "The grades file is an Excel 97-2003 workbook; please save it as .xlsx",
        ),
        (xlsx_sheet([]), "grades.xlsx", "The grades file is empty"),
        (xlsx_sheet([[], [None, ""]]), "grades.xlsx", "The grades file is empty"),
        (b"", "grades.csv", "The grades file is empty"),
        (b"\xef\xbb\xbf\r\n;;\r\n", "grades.csv", "The grades file is empty"),
        (
            "Nom du fichier,Note\n".encode("utf-16"),
            "grades.csv",
            'The grades file could not be read: it is not UTF-8 text (save it as "CSV UTF-8")',
        ),
    ],
    ids=[
        "xls-name",
        "txt",
        "no-suffix",
        "truncated",
        "csv-as-xlsx",
        "encrypted",
        "legacy",
        "empty-sheet",
        "blank-rows",
        "empty-csv",
        "blank-csv",
        "utf16-csv",
    ],
)
def test_a_grades_file_that_cannot_be_read_is_refused_with_its_reason(
    data: bytes, filename: str, reason: str
) -> None:
    with pytest.raises(SheetError) as refused:
        read_header(data, filename)
    assert refused.value.reason == reason
    with pytest.raises(SheetError) as refused:
        read_rows(data, filename, ALL_FIELDS, uploaded=["a.jpg"])
    assert refused.value.reason == reason


def test_a_sheet_with_only_a_header_is_refused() -> None:
    with pytest.raises(SheetError) as refused:
        read_rows(xlsx_sheet([HEADER, []]), "grades.xlsx", ALL_FIELDS, uploaded=["a.jpg"])
    assert refused.value.reason == "The grades file has no rows below its header row"


@pytest.mark.parametrize("kind", ["xlsx", "csv"])
def test_a_sheet_of_more_than_ten_thousand_rows_is_refused(kind: str) -> None:
    rows: list[list[object]] = [["File name", "DR grade"]]
    rows += [[f"img_{n}.jpg", 1] for n in range(MAX_ROWS + 1)]
    sheet = xlsx_sheet(rows) if kind == "xlsx" else csv_sheet(rows)
    mapping = Mapping(filename="File name", grades={"dr_grade": "DR grade"})
    with pytest.raises(SheetError) as refused:
        read_rows(sheet, f"grades.{kind}", mapping, uploaded=["img_1.jpg"])
    assert refused.value.reason == "The grades file has more than 10,000 rows; please split it"


def test_a_sheet_of_exactly_ten_thousand_rows_is_read() -> None:
    rows: list[list[object]] = [["File name", "DR grade"]]
    rows += [[f"img_{n}.jpg", n % 5] for n in range(MAX_ROWS)]
    mapping = Mapping(filename="File name", grades={"dr_grade": "DR grade"})
    result = read_rows(csv_sheet(rows), "grades.csv", mapping, uploaded=["img_9999.jpg"])
    assert result.grades == {"img_9999.jpg": {"dr_grade": 4}}
    assert len(result.problems) == MAX_ROWS - 1


# --- rows checked against the uploads --------------------------------------------------------


def mixed_sheet() -> list[list[object]]:
    return [
        [],
        HEADER,
        ["IMG_001.JPG", 2, "yes", "no", 0.4, "0.45", "Early", "y", "Dot haemorrhages"],
        ["C:\\camp\\day1\\img_002.jpg", "0", "No", "N", "0,3", 0.3, "none", True, None],
        ["img_404.jpg", 1, "no", "no", 0.3, 0.3, "none", "yes", None],
        ["img_003.jpg", 7, "yes", "no", 0.3, 0.3, "none", "yes", None],
        [],
        ["img_001.jpg", 3, "no", "no", 0.5, 0.5, "none", "yes", "regraded"],
        [None, 1, "no"],
        ["img_005.jpg", "4.0", None, None, None, None, None, "no", None],
    ]


UPLOADED = ["img_001.jpg", "img_002.jpg", "img_003.jpg", "img_004.jpg", "img_005.jpg"]


@pytest.mark.parametrize("kind", ["xlsx", "csv"])
def test_a_mapped_sheet_reports_each_bad_row_with_its_row_number_and_keeps_the_good_ones(
    kind: str,
) -> None:
    rows = mixed_sheet()
    sheet = xlsx_sheet(rows) if kind == "xlsx" else csv_sheet(rows, delimiter=";", bom=True)

    result = read_rows(sheet, f"grades.{kind}", ALL_FIELDS, uploaded=UPLOADED)

    assert result.problems == [
        RowProblem(
            row=5, filename="img_404.jpg", reason="File not among the uploaded files: img_404.jpg"
        ),
        RowProblem(row=6, filename="img_003.jpg", reason="DR grade must be 0-4, not 7"),
        RowProblem(
            row=8, filename="img_001.jpg", reason="Duplicate row for img_001.jpg (first on row 3)"
        ),
        RowProblem(row=9, filename=None, reason="Blank file name"),
    ]
    assert result.images_without_row == ["img_004.jpg"]
    assert result.grades == {
        "img_001.jpg": {
            "dr_grade": 2,
            "dme": True,
            "glaucoma_suspect": False,
            "vcdr_right": 0.4,
            "vcdr_left": 0.45,
            "amd": "early",
            "gradable": True,
            "notes": "Dot haemorrhages",
        },
        "img_002.jpg": {
            "dr_grade": 0,
            "dme": False,
            "glaucoma_suspect": False,
            "vcdr_right": 0.3,
            "vcdr_left": 0.3,
            "amd": "none",
            "gradable": True,
        },
        "img_005.jpg": {"dr_grade": 4, "gradable": False},
    }


def test_every_bad_value_of_a_row_is_reported_and_the_row_is_left_out() -> None:
    sheet = xlsx_sheet([HEADER, ["a.jpg", 5, "maybe", "no", 1.5, 0.2, "wet", "yes", None]])
    result = read_rows(sheet, "grades.xlsx", ALL_FIELDS, uploaded=["a.jpg"])
    assert [(p.row, p.reason) for p in result.problems] == [
        (2, "DR grade must be 0-4, not 5"),
        (2, "DME must be yes or no, not maybe"),
        (2, "VCDR right must be 0-1, not 1.5"),
        (2, "AMD must be one of none, early, intermediate, advanced, not wet"),
    ]
    assert result.grades == {}
    assert result.images_without_row == []


def test_a_row_blank_in_every_mapped_column_is_skipped_silently() -> None:
    sheet = xlsx_sheet([["File name", "DR grade", "Remark"], [None, None, "checked 3 May"]])
    mapping = Mapping(filename="File name", grades={"dr_grade": "DR grade"})
    result = read_rows(sheet, "grades.xlsx", mapping, uploaded=["a.jpg"])
    assert result.problems == []
    assert result.grades == {}
    assert result.images_without_row == ["a.jpg"]


def test_a_row_with_only_a_file_name_is_kept_without_grades() -> None:
    sheet = xlsx_sheet([["File name", "DR grade"], ["a.jpg"]])
    mapping = Mapping(filename="File name", grades={"dr_grade": "DR grade"})
    assert read_rows(sheet, "grades.xlsx", mapping, uploaded=["a.jpg"]).grades == {"a.jpg": {}}


def test_file_names_match_ignoring_case_folders_and_unicode_composition() -> None:
    sheet = xlsx_sheet([["File name", "DR grade"], ["/exports/Cafe\u0301 01.PNG", 1], [12345, 2]])
    mapping = Mapping(filename="File name", grades={"dr_grade": "DR grade"})
    result = read_rows(sheet, "grades.xlsx", mapping, uploaded=["caf\u00e9 01.png", "12345"])
    assert result.grades == {"caf\u00e9 01.png": {"dr_grade": 1}, "12345": {"dr_grade": 2}}


def test_a_row_naming_two_uploads_of_the_same_name_is_refused_as_ambiguous() -> None:
    sheet = xlsx_sheet([["File name", "DR grade"], ["eye.jpg", 1]])
    mapping = Mapping(filename="File name", grades={"dr_grade": "DR grade"})
    result = read_rows(sheet, "grades.xlsx", mapping, uploaded=["left/eye.jpg", "right/EYE.jpg"])
    assert result.problems == [
        RowProblem(
            row=2,
            filename="eye.jpg",
            reason="File name matches more than one uploaded file: eye.jpg",
        )
    ]
    assert result.images_without_row == []


def test_a_row_with_a_quoted_line_break_counts_as_one_row_as_excel_shows_it() -> None:
    sheet = csv_sheet([["File name", "Notes"], ["a.jpg", "two\nlines"], ["b.jpg", "x"]])
    mapping = Mapping(filename="File name", grades={"notes": "Notes"})
    result = read_rows(sheet, "grades.csv", mapping, uploaded=["a.jpg"])
    assert result.problems == [
        RowProblem(row=3, filename="b.jpg", reason="File not among the uploaded files: b.jpg")
    ]
    assert result.grades == {"a.jpg": {"notes": "two\nlines"}}


def test_a_custom_field_keeps_its_value_as_text() -> None:
    sheet = xlsx_sheet([["File name", "HTN retinopathy"], ["a.jpg", 2]])
    mapping = Mapping(filename="File name", grades={"custom:HTN retinopathy": "HTN retinopathy"})
    result = read_rows(sheet, "grades.xlsx", mapping, uploaded=["a.jpg"])
    assert result.grades == {"a.jpg": {"custom:HTN retinopathy": "2"}}


# --- every grade field's values --------------------------------------------------------------

ACCEPTED: list[tuple[str, object, GradeValue]] = [
    ("dr_grade", 0, 0),
    ("dr_grade", 4, 4),
    ("dr_grade", 2.0, 2),
    ("dr_grade", "2", 2),
    ("dr_grade", " 3 ", 3),
    ("dr_grade", "1.0", 1),
    *[
        (field, raw, expected)
        for field in ("dme", "glaucoma_suspect", "gradable")
        for raw, expected in [
            ("yes", True),
            ("Y", True),
            ("TRUE", True),
            ("1", True),
            (1, True),
            (True, True),
            ("no", False),
            ("n", False),
            ("False", False),
            ("0", False),
            (0.0, False),
            (False, False),
        ]
    ],
    *[
        (field, raw, expected)
        for field in ("vcdr_right", "vcdr_left")
        for raw, expected in [(0, 0.0), (1, 1.0), (0.35, 0.35), ("0.6", 0.6), ("0,7", 0.7)]
    ],
    ("amd", "none", "none"),
    ("amd", "Early", "early"),
    ("amd", " INTERMEDIATE ", "intermediate"),
    ("amd", "advanced", "advanced"),
    ("notes", "  Refer to ophthalmologist ", "Refer to ophthalmologist"),
    ("notes", 42, "42"),
]


@pytest.mark.parametrize(("field", "raw", "expected"), ACCEPTED)
def test_an_accepted_grade_is_normalised(field: str, raw: object, expected: GradeValue) -> None:
    record, problems = value_of(field, raw)
    assert problems == []
    assert record == {field: expected}
    assert type(record[field]) is type(expected)


REFUSED: list[tuple[str, object, str]] = [
    ("dr_grade", 7, "DR grade must be 0-4, not 7"),
    ("dr_grade", -1, "DR grade must be 0-4, not -1"),
    ("dr_grade", 2.5, "DR grade must be 0-4, not 2.5"),
    ("dr_grade", "R2", "DR grade must be 0-4, not R2"),
    ("dr_grade", "moderate", "DR grade must be 0-4, not moderate"),
    ("dr_grade", True, "DR grade must be 0-4, not True"),
    ("dme", "maybe", "DME must be yes or no, not maybe"),
    ("dme", 2, "DME must be yes or no, not 2"),
    ("glaucoma_suspect", "suspect", "Glaucoma suspicion must be yes or no, not suspect"),
    ("gradable", "ungradable", "Gradable must be yes or no, not ungradable"),
    ("vcdr_right", 1.2, "VCDR right must be 0-1, not 1.2"),
    ("vcdr_right", -0.1, "VCDR right must be 0-1, not -0.1"),
    ("vcdr_left", "40%", "VCDR left must be 0-1, not 40%"),
    ("vcdr_left", "nan", "VCDR left must be 0-1, not nan"),
    ("vcdr_left", True, "VCDR left must be 0-1, not True"),
    ("amd", "wet", "AMD must be one of none, early, intermediate, advanced, not wet"),
    ("amd", 1, "AMD must be one of none, early, intermediate, advanced, not 1"),
    ("notes", "x" * 2001, "Notes must be at most 2,000 characters"),
]


@pytest.mark.parametrize(("field", "raw", "reason"), REFUSED)
def test_a_grade_outside_its_allowed_values_is_refused_with_the_reason(
    field: str, raw: object, reason: str
) -> None:
    record, problems = value_of(field, raw)
    assert record is None
    assert problems == [reason]


def test_every_grade_field_is_covered_by_accepted_and_refused_values() -> None:
    assert {f for f, _, _ in ACCEPTED} == set(GRADE_FIELDS) == {f for f, _, _ in REFUSED}


def test_a_long_refused_value_is_shortened_in_its_reason() -> None:
    _, problems = value_of("amd", "a" * 100)
    assert problems == [f"AMD must be one of none, early, intermediate, advanced, not {'a' * 39}…"]


# --- the mapping -----------------------------------------------------------------------------


def test_a_mapping_is_read_from_the_api_json() -> None:
    mapping = Mapping.from_json(
        '{"filename": " File name ", "grades": {"dr_grade": "DR grade", "custom: HTN ": "HTN"}}'
    )
    assert mapping == Mapping(
        filename="File name", grades={"dr_grade": "DR grade", "custom:HTN": "HTN"}
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "The mapping is not valid JSON"),
        ("[]", 'The mapping must be a JSON object: {"filename": ..., "grades": {...}}'),
        ('{"grades": {"dr_grade": "DR"}}', "The mapping is missing filename"),
        (
            '{"filename": "F", "grades": {"dr_grade": "DR"}, "x": 1}',
            "The mapping has an unknown key: x",
        ),
        (
            '{"filename": " ", "grades": {"dr_grade": "DR"}}',
            "The mapping must name the column of file names",
        ),
        ('{"filename": "F", "grades": {}}', "The mapping must name at least one grade column"),
        (
            '{"filename": "F", "grades": {"dr": "DR"}}',
            "Unknown grade field: dr (known: dr_grade, dme, glaucoma_suspect, vcdr_right, "
            "vcdr_left, amd, gradable, notes; or name your own as custom:<name>)",
        ),
        (
            '{"filename": "F", "grades": {"custom:": "DR"}}',
            "A custom grade field needs a name of 1-64 characters after custom:, not 'custom:'",
        ),
        (
            '{"filename": "F", "grades": {"dr_grade": ""}}',
            "The mapping must name a column for dr_grade",
        ),
        (
            '{"filename": "F", "grades": {"dr_grade": 3}}',
            "The mapping's grades must map field names to column names",
        ),
        (
            '{"filename": 3, "grades": {"dr_grade": "DR"}}',
            "The mapping's filename must be a column name",
        ),
        (
            '{"filename": "F", "grades": {"vcdr_right": "VCDR", "vcdr_left": "vcdr"}}',
            "Column vcdr is mapped to both vcdr_right and vcdr_left",
        ),
        (
            '{"filename": "F", "grades": {"notes": "f"}}',
            "Column f is mapped to both the file name and notes",
        ),
    ],
)
def test_a_malformed_mapping_is_refused_with_a_clear_reason(text: str, reason: str) -> None:
    with pytest.raises(MappingError) as refused:
        Mapping.from_json(text)
    assert refused.value.reason == reason


def test_a_mapping_matches_header_columns_ignoring_case_and_spaces() -> None:
    sheet = xlsx_sheet([["  FILE NAME ", "dr grade"], ["a.jpg", 1]])
    mapping = Mapping(filename="File name", grades={"dr_grade": "DR Grade"})
    assert read_rows(sheet, "grades.xlsx", mapping, uploaded=["a.jpg"]).grades == {
        "a.jpg": {"dr_grade": 1}
    }


def test_a_mapping_to_a_missing_column_is_refused() -> None:
    mapping = Mapping(filename="File name", grades={"dr_grade": "DR grade", "dme": "Macula"})
    with pytest.raises(MappingError) as refused:
        read_rows(xlsx_sheet([HEADER, ["a.jpg", 1]]), "grades.xlsx", mapping, uploaded=["a.jpg"])
    assert refused.value.reason == "Column not found in the grades file's header: Macula"


def test_a_mapping_to_a_column_named_twice_in_the_header_is_refused() -> None:
    sheet = csv_sheet([["File name", "Grade", "grade"], ["a.jpg", 1, 2]])
    mapping = Mapping(filename="File name", grades={"dr_grade": "Grade"})
    with pytest.raises(MappingError) as refused:
        read_rows(sheet, "grades.csv", mapping, uploaded=["a.jpg"])
    assert refused.value.reason == (
        "Column Grade appears more than once in the grades file's header; please rename one"
    )
