"""Sheets of known grades for the pre-graded upload's tests: real .xlsx workbooks (openpyxl)
and CSV text built from rows (header first), and the files a grader might send by mistake.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import openpyxl

__all__ = [
    "broken_xlsx",
    "csv_sheet",
    "encrypted_xlsx",
    "legacy_xls",
    "xlsx_sheet",
]

_CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def xlsx_sheet(
    rows: Sequence[Sequence[object]],
    *,
    title: str = "Grades",
    hidden_first: Sequence[Sequence[object]] | None = None,
) -> bytes:
    """A workbook whose first sheet holds `rows` from A1 (an empty row stays empty; None is
    a blank cell). `hidden_first`: a hidden sheet placed before it, as templates keep lists."""
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.worksheets[0])
    if hidden_first is not None:
        lists = workbook.create_sheet("Lists")
        lists.sheet_state = "hidden"
        for row in hidden_first:
            lists.append(list(row))
    sheet = workbook.create_sheet(title)
    for row in rows:
        sheet.append(list(row))
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def csv_sheet(
    rows: Sequence[Sequence[object]], *, delimiter: str = ",", bom: bool = False
) -> bytes:
    """UTF-8 CSV of `rows` (None is an empty field); `bom` as Excel's "CSV UTF-8" writes it."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode()


def broken_xlsx() -> bytes:
    """A real workbook cut off half way, as an interrupted download leaves it."""
    whole = xlsx_sheet([["file name", "DR grade"], ["img_001.jpg", 2]])
    return whole[: len(whole) // 2]


def _compound_file(*stream_names: str) -> bytes:
    # An OLE2 compound file is a 512-byte header then sectors; the directory holds stream
    # names in UTF-16. Enough of one for a reader that looks at the magic and the names.
    header = _CFB_MAGIC + b"\x00" * 16 + b"\x3e\x00\x03\x00\xfe\xff\x09\x00"
    header += b"\x00" * (512 - len(header))
    directory = b"".join(
        name.encode("utf-16-le").ljust(64, b"\x00") + b"\x00" * 64 for name in stream_names
    )
    return header + directory.ljust(1536, b"\x00")


def encrypted_xlsx() -> bytes:
    """What Excel writes for a password-protected .xlsx: the package inside an OLE2 file."""
    return _compound_file("Root Entry", "EncryptionInfo", "EncryptedPackage")


def legacy_xls() -> bytes:
    """An Excel 97-2003 workbook's container (renamed to .xlsx by the sender)."""
    return _compound_file("Root Entry", "Workbook")
