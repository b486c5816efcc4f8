"""Excel workbooks (``*.xlsx``): the first worksheet as records, streamed row by row.

openpyxl's read-only mode parses the sheet's XML as it goes, so memory holds one row plus the
workbook's shared-string table (python-calamine was ten times faster, but loads the whole sheet
into memory: 574 MB for a million rows; see bench/README.md). The first non-blank row is the
header; cells become the text a CSV export would hold (integers without ``.0``, dates
``YYYY-MM-DD``, booleans ``TRUE``/``FALSE``) and a record's line is its row number in the sheet.
"""

from __future__ import annotations

import csv
import datetime as dt
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from orgsyncd.core.reader import Record
from orgsyncd.errors import FileRejected, OrgsyncError

_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # encrypted (password) workbooks and old .xls


def is_workbook_name(name: str) -> bool:
    return name.lower().endswith(".xlsx")


def cell_text(value: Any) -> str:
    """A cell as the text a CSV export of it would hold."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if value is None:
        return ""
    if kind is bool:
        return "TRUE" if value else "FALSE"
    if kind is int:
        return str(value)
    if kind is float:
        return str(int(value)) if value.is_integer() else repr(value)
    if kind is dt.datetime:
        if value.time() == dt.time():
            return value.date().isoformat()  # type: ignore[no-any-return]
        return value.isoformat(sep=" ")  # type: ignore[no-any-return]
    if kind in (dt.date, dt.time):
        return value.isoformat()  # type: ignore[no-any-return]
    return str(value)


def read_workbook(
    path: Path, progress: Callable[[int], None] | None = None, copy_to: TextIO | None = None
) -> Iterator[Record]:
    """Every non-blank row of the first worksheet, as text cells (the header's width: trailing
    empty cells are not fields). ``progress`` (bytes of the file read) is not called: the
    workbook's own reader does not say how far into the file it is. ``copy_to`` gets each record
    as a CSV line (``line,cells...``), so the results file can echo the sheet without parsing the
    workbook a second time."""
    workbook = _open(path)
    copy = csv.writer(copy_to, lineterminator="\n").writerow if copy_to is not None else None
    try:
        sheet = _first_sheet(workbook)
        width = -1
        for number, row in enumerate(sheet.iter_rows(min_row=1, min_col=1, values_only=True), 1):
            cells = [cell_text(value) for value in row]
            while cells and not cells[-1].strip():
                cells.pop()
            if not cells:
                continue
            if width < 0:
                width = len(cells)
            elif len(cells) < width:
                cells.extend([""] * (width - len(cells)))
            if copy is not None:
                copy((number, *cells))
            yield number, cells
    except OrgsyncError:
        raise
    except Exception as exc:  # a workbook's XML is the sender's; any failure parsing it is theirs
        raise _unreadable(f"the workbook cannot be read ({type(exc).__name__}: {exc})") from None
    finally:
        workbook.close()


def read_copy(copy: Path) -> Iterator[tuple[int, list[str], None]]:
    """The records ``read_workbook`` copied, in the shape ``ResultsWriter.echo_rows`` takes."""
    with copy.open(encoding="utf-8", newline="") as fh:
        for line, *cells in csv.reader(fh):
            yield int(line), cells, None


def _open(path: Path) -> Any:
    import openpyxl  # the CSV path never pays for importing it

    with path.open("rb") as fh:
        magic = fh.read(len(_OLE2_MAGIC))
    if magic == _OLE2_MAGIC:
        raise _unreadable("the workbook is password-protected (or an Excel 97-2003 file renamed to .xlsx)")
    if not zipfile.is_zipfile(path):
        raise _unreadable("the file is named .xlsx but is not an Excel workbook")
    try:
        with warnings.catch_warnings():  # e.g. "no default style": harmless, and not the sender's to fix
            warnings.simplefilter("ignore")
            return openpyxl.load_workbook(path, read_only=True, data_only=True, keep_links=False)
    except Exception as exc:
        raise _unreadable(f"the workbook cannot be opened ({type(exc).__name__}: {exc})") from None


def _first_sheet(workbook: Any) -> Any:
    if not workbook.worksheets:
        raise _unreadable("the workbook has no worksheet")
    sheet = workbook.worksheets[0]
    sheet.reset_dimensions()  # the stored dimension may be wrong; read what is there
    return sheet


def _unreadable(reason: str) -> FileRejected:
    return FileRejected(
        "unreadable_workbook",
        f"{reason}; save the first worksheet from Excel as an unprotected .xlsx workbook, "
        "or as CSV UTF-8, and upload it again",
    )
