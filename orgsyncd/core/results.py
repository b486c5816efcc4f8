"""Result files: the results CSV (one line per input row, echoing it) and the summary JSON."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from orgsyncd.core.header import RESULT_COLUMNS, Issue
from orgsyncd.core.reader import EchoRecord

RESULT_HEADER = ("row", "outcome", "code", "message")
OUTCOMES = ("created", "updated", "unchanged", "deactivated", "reactivated", "error", "warning")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# One regex over the joined row is much cheaper than a check per cell, and almost never matches.
# (Starting with a literal comma lets the regex engine skip ahead; an alternation with ^ cannot.)
_RAW_CELL_START = re.compile(',"?[=+\\-@\t]')
_RAW_STARTS = (*_FORMULA_START, *(f'"{ch}' for ch in _FORMULA_START))
_NEEDS_ESCAPE = re.compile("(?:^|\x1f)[=+\\-@\t\r]")

Outcome = tuple[int, str, str | None, str | None]  # line, outcome, code, message


def escape(value: str) -> str:
    """Keep spreadsheets from running a cell as a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def empty_counts() -> dict[str, int]:
    return dict.fromkeys(OUTCOMES, 0)


@dataclass(slots=True)
class Summary:
    job_id: int | None
    tenant: str
    file: str
    sha256: str
    mode: str
    status: str
    counts: dict[str, int] = field(default_factory=empty_counts)
    received_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "tenant": self.tenant,
            "file": self.file,
            "sha256": self.sha256,
            "mode": self.mode,
            "status": self.status,
            "counts": {key: self.counts.get(key, 0) for key in OUTCOMES},
            "received_at": iso(self.received_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }
        data.update(self.extra)
        return data


def iso(moment: datetime | str | None) -> str | None:
    """ISO 8601 UTC with a Z. Raw SQL on SQLite hands back text, so that is accepted too."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary_status(counts: dict[str, int], file_error: bool) -> str:
    rows = sum(n for key, n in counts.items() if key != "warning")
    errors = counts.get("error", 0)
    if file_error or (rows and errors == rows):
        return "failed"
    return "partially_succeeded" if errors else "succeeded"


class ResultsWriter:
    """Writes the results CSV by walking the outcomes (from the database, in line order) alongside
    a second streaming read of the input, so neither is ever held in memory."""

    def __init__(self, out: TextIO, header: Sequence[str] | None, newline: str = "\r\n") -> None:
        """*newline*: the input's line ending (``reader.line_ending``), so an echoed record is the
        input's bytes and the file as a whole reads like the one that was sent."""
        names = list(header or ())
        self.drop = {i for i, name in enumerate(names) if name.strip().lower() in RESULT_COLUMNS}
        self.out = out
        self.newline = newline
        # Written as CRLF and the terminator swapped: the csv module quotes a cell only for the
        # characters of its own terminator, and a lone CR or LF in a cell must be quoted too.
        target = out if newline == "\r\n" else _Terminated(out, newline)
        self.writer = csv.writer(target, lineterminator="\r\n")
        echo = [escape(name) for i, name in enumerate(names) if i not in self.drop]
        self.writer.writerow([*RESULT_HEADER, *echo])

    def issues(self, issues: Iterable[Issue]) -> None:
        for issue in issues:
            self.writer.writerow(("0", issue.outcome, issue.code, issue.message))

    def rows(
        self,
        outcomes: Iterable[Outcome],
        records: Iterator[tuple[int, list[str]]],
        default: str = "unchanged",
    ) -> int:
        """One line per record; ``outcomes`` (in line order) may leave out records whose outcome
        is ``default`` with no code."""
        written = 0
        drop = self.drop
        for (line, fields), (outcome, code, message) in _merge(outcomes, records, default):
            if drop:
                fields = [v for i, v in enumerate(fields) if i not in drop]
            if _NEEDS_ESCAPE.search("\x1f".join(fields)):
                fields = [escape(v) for v in fields]
            self.writer.writerow((line, outcome, code or "", message or "", *fields))
            written += 1
        return written

    def echo_rows(
        self, outcomes: Iterable[Outcome], records: Iterator[EchoRecord], default: str = "unchanged"
    ) -> int:
        """Like ``rows``, but copies a record that is one physical line as it is (see
        ``read_echo_records``) instead of re-encoding it."""
        if self.drop:
            raise ValueError("echo_rows cannot drop columns; use rows")
        written = 0
        write, newline = self.out.write, self.newline
        for (line, fields, raw), (outcome, code, message) in _merge(outcomes, records, default):
            if raw is not None and not _raw_needs_escape(raw):
                write(f"{line},{outcome},{code or ''},{_csv_cell(message)},{raw}{newline}")
            else:
                cells = fields if fields is not None else _split_plain(raw or "")
                if _NEEDS_ESCAPE.search("\x1f".join(cells)):
                    cells = [escape(v) for v in cells]
                self.writer.writerow((line, outcome, code or "", message or "", *cells))
            written += 1
        return written


class _Terminated:
    """A stream for csv.writer whose rows end in *newline* instead of CRLF."""

    def __init__(self, out: TextIO, newline: str) -> None:
        self.out, self.newline = out, newline

    def write(self, row: str) -> int:
        return self.out.write(row[:-2] + self.newline if row.endswith("\r\n") else row)


R = TypeVar("R", bound=tuple[Any, ...])


def _merge(
    outcomes: Iterable[Outcome], records: Iterable[R], default: str
) -> Iterator[tuple[R, tuple[str, str | None, str | None]]]:
    """Pair records (line first) with their outcomes; a record without one has the default. Every
    outcome must find its record, or the results would be out of step with the input."""
    implicit = (default, None, None)
    pending = iter(outcomes)
    due = next(pending, None)
    for record in records:
        if due is not None and due[0] == record[0]:
            yield record, due[1:]
            due = next(pending, None)
        else:
            yield record, implicit
    if due is not None:
        raise RuntimeError(f"results out of step with input: no input row for line {due[0]}")


def _raw_needs_escape(raw: str) -> bool:
    # A cell starts the line or follows a comma, quoted or not; a false alarm only costs the slow path.
    return raw.startswith(_RAW_STARTS) or _RAW_CELL_START.search(raw) is not None


def _split_plain(raw: str) -> list[str]:
    """Cells of a one-line record (quoted cells unquoted), for the rare line that needs escaping."""
    return next(csv.reader([raw], strict=True))


def _csv_cell(value: str | None) -> str:
    if not value:
        return ""
    value = escape(value)
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
