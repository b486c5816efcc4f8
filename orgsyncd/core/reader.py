"""Streaming CSV reading: UTF-8 (BOM or not), RFC 4180, LF/CRLF/CR, plain or gzip.

Yields ``(line, fields)`` where ``line`` is the physical line the record starts on (header = 1),
never holding more than one record in memory.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from orgsyncd.errors import FileRejected

Record = tuple[int, list[str]]
_CHUNK = 1 << 16
_PROGRESS_MASK = (1 << 14) - 1


def is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


@contextmanager
def _decompressed(path: Path, raw: BinaryIO) -> Iterator[BinaryIO]:
    if is_gzip(path):
        with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            yield gz  # type: ignore[misc]
    else:
        yield raw


@contextmanager
def open_binary(path: Path) -> Iterator[BinaryIO]:
    with path.open("rb") as raw, _decompressed(path, raw) as binary:
        yield binary


def read_records(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[Record]:
    """Every non-blank record of the file; raises FileRejected for file-level problems.

    ``progress`` is called now and then with how many bytes of the file (as stored) were read.
    """
    last_line = 0
    try:
        with path.open("rb") as raw, _decompressed(path, raw) as binary:
            text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="strict", newline="")
            reader = csv.reader(text, strict=True)
            for fields in reader:
                start, last_line = last_line + 1, reader.line_num
                if progress is not None and not start & _PROGRESS_MASK:
                    progress(raw.tell())
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                yield start, fields
            if progress is not None:
                progress(raw.tell())  # the end: a bar reaches 100 %
    except csv.Error as exc:
        raise FileRejected("malformed_csv", _csv_message(last_line + 1, exc)) from None
    except UnicodeDecodeError:
        raise FileRejected("encoding_error", locate_bad_utf8(path)) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise FileRejected(
            "malformed_csv", f"the file ends in .gz but is not a complete gzip file ({exc})"
        ) from None


def line_ending(path: Path, default: str = "\r\n") -> str:
    """How the file's first line ends ("\r\n", "\n" or "\r"); *default* when it has no line end
    in its first 64 KiB or cannot be read."""
    try:
        with open_binary(path) as binary:
            head = binary.read(_CHUNK)
    except (OSError, EOFError, zlib.error):
        return default
    cut = re.search(b"\r\n|\n|\r", head)
    if cut is None or (cut.group() == b"\r" and cut.end() == len(head) and len(head) == _CHUNK):
        return default  # no line end seen (or a CR that may be half of a CRLF split by the read)
    return cut.group().decode("ascii")


EchoRecord = tuple[int, list[str] | None, str | None]
# A whole record on one line: every cell unquoted without quotes, or fully quoted.
_ONE_LINE_RECORD = re.compile(r'(?:[^",]*|"[^"]*(?:""[^"]*)*")(?:,(?:[^",]*|"[^"]*(?:""[^"]*)*"))*')


def read_echo_records(path: Path) -> Iterator[EchoRecord]:
    """The records of an already validated file, for echoing into the results file: a record that
    is one physical line comes back as its raw text (no CSV parsing needed to copy it), any other
    as parsed fields. Same line numbers and blank-line rules as ``read_records``."""
    with path.open("rb") as raw, _decompressed(path, raw) as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="strict", newline="")
        spanned = 0  # extra physical lines taken by records that span lines
        for count, physical in enumerate(text, 1):
            body = physical.rstrip("\r\n")
            if '"' not in body or ("," in body and _ONE_LINE_RECORD.fullmatch(body)):
                if body.strip():
                    yield count + spanned, None, body
                continue
            taken = [0]
            fields = next(csv.reader(_continued(physical, text, taken), strict=True))
            if not (len(fields) == 1 and not fields[0].strip()):  # '""' is a blank line too
                yield count + spanned, fields, None
            spanned += taken[0]


def _continued(first: str, rest: Iterator[str], taken: list[int]) -> Iterator[str]:
    """``first``, then as many lines of ``rest`` as the CSV reader asks for, counted in ``taken``."""
    yield first
    for line in rest:
        taken[0] += 1
        yield line


def _csv_message(line: int, exc: csv.Error) -> str:
    text = str(exc)
    if "unexpected end of data" in text or "field larger than field limit" in text:
        return (
            f"line {line}: a quoted field starts on this line and its closing quote never "
            'comes; close the field with " (write a quote inside a field as "")'
        )
    return f'line {line}: {text}; quote a field that contains a quote, comma or line break ("...")'


def locate_bad_utf8(path: Path) -> str:
    """Line and column of the first byte that is not UTF-8, for a message the sender can act on."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    line, col, prev_cr = 1, 0, False
    with open_binary(path) as binary:
        while True:
            chunk = binary.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                text = exc.object[: exc.start].decode("utf-8", errors="replace")
                if line == 1 and col == 0:
                    text = text.removeprefix("\ufeff")
                line, col, prev_cr = _advance(text, line, col, prev_cr)
                bad = exc.object[exc.start]
                return (
                    f"byte 0x{bad:02X} on line {line}, column {col + 1} is not valid UTF-8 "
                    "(the file looks like it was saved in a legacy encoding such as Windows-1252); "
                    "save the file as CSV UTF-8 and upload it again"
                )
            line, col, prev_cr = _advance(text, line, col, prev_cr)
            if not chunk:
                break
    return "the file is not valid UTF-8; save the file as CSV UTF-8 and upload it again"


def _advance(text: str, line: int, col: int, prev_cr: bool) -> tuple[int, int, bool]:
    for ch in text:
        if ch == "\n":
            if not prev_cr:
                line += 1
            col, prev_cr = 0, False
        elif ch == "\r":
            line, col, prev_cr = line + 1, 0, True
        else:
            col, prev_cr = col + 1, False
    return line, col, prev_cr
