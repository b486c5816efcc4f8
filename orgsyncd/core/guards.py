"""Guards: the rules that hold a job for an operator instead of applying it.

Pure functions over what the job runner knows (the file's name and header, the last applied
file's); the deactivation threshold needs the plan's counts and lives with the planner. A held
job is applied only once approved, and then no guard looks at it again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from orgsyncd.core.header import RESULT_COLUMNS

# 8 digits, optionally followed by 6 more (directly or after T or _), not part of a longer number;
# or an ISO date with an optional time.
_COMPACT = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?:[T_]?(\d{2})(\d{2})(\d{2}))?(?!\d)")
_ISO = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?:[T_ ](\d{2})[:\-]?(\d{2})(?:[:\-]?(\d{2}))?)?(?!\d)")


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a job waits for an operator: an error code and a sentence for the results file."""

    code: str
    message: str


def decide_hint(job_id: int) -> str:
    if job_id == 0:  # a dry run: there is no job to decide about
        return "nothing was applied (a dry run would be held here)"
    return (
        f"nothing was applied; see the plan file, then 'orgsyncd jobs approve {job_id}' applies it "
        f"and 'orgsyncd jobs reject {job_id}' drops it"
    )


def time_from_name(name: str, zone: tzinfo) -> datetime | None:
    """The HRIS timestamp in a file name (``YYYYMMDD``, ``YYYYMMDDHHMMSS``, ``YYYY-MM-DD`` with an
    optional ``THH:MM:SS``), read in the daemon's time zone; None when the name has no valid one.
    The last timestamp in the name wins (``roster_v2_20240501.csv``: the date, not the 2)."""
    found: datetime | None = None
    for pattern in (_ISO, _COMPACT):
        for match in pattern.finditer(name):
            moment = _moment(match.groups(), zone)
            if moment is not None:
                found = moment
        if found is not None:
            return found
    return None


def _moment(parts: Sequence[str | None], zone: tzinfo) -> datetime | None:
    year, month, day, hour, minute, second = (int(p) if p else 0 for p in parts)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:  # 20241399: digits, not a date
        return None
    if not 1990 <= moment.year <= 2200:
        return None
    return moment.astimezone(UTC)


def stale_file(file_time: datetime | None, last_applied: datetime | None, job_id: int) -> Hold | None:
    """hold_stale_files: older than the last applied file is a re-sent or out-of-order export."""
    if file_time is None or last_applied is None or file_time >= last_applied:
        return None
    return Hold(
        "stale_file",
        f"this file is from {_show(file_time)}, older than the last applied file "
        f"({_show(last_applied)}); an old export applied now would undo newer changes. "
        + decide_hint(job_id),
    )


def header_changed(previous: Sequence[str] | None, current: Sequence[str], job_id: int) -> Hold | None:
    """hold_on_header_change: a full file whose set of columns differs from the last applied full
    file's (compared without case: case alone changes no column's meaning)."""
    if previous is None:
        return None
    before = {_column_key(name): name for name in column_set(previous)}
    now = {_column_key(name): name for name in column_set(current)}
    added = [now[key] for key in now if key not in before]
    removed = [before[key] for key in before if key not in now]
    if not added and not removed:
        return None
    parts = []
    if added:
        parts.append("added " + ", ".join(repr(name) for name in added))
    if removed:
        parts.append("removed " + ", ".join(repr(name) for name in removed))
    return Hold(
        "header_changed",
        f"the columns differ from the last applied full file's: {'; '.join(parts)}. " + decide_hint(job_id),
    )


def column_set(names: Sequence[str]) -> list[str]:
    """The header as stored for the next comparison: names as given, without empty cells and the
    bookkeeping columns of a results file uploaded again (row, outcome, code, message)."""
    return [name for name in names if name and name.strip().lower() not in RESULT_COLUMNS]


def _column_key(name: str) -> str:
    return name.strip().casefold()


def _show(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
