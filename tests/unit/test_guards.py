"""The guards' pure parts: HRIS timestamps in file names, header comparison, staleness."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from orgsyncd.core.guards import header_changed, stale_file, time_from_name

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("roster_20240501.csv", datetime(2024, 5, 1, tzinfo=UTC)),
        ("full_20240501093000.csv", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("full_20240501_093000.csv", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("hr-2024-05-01.csv", datetime(2024, 5, 1, tzinfo=UTC)),
        ("hr-2024-05-01T09:30:15.csv", datetime(2024, 5, 1, 9, 30, 15, tzinfo=UTC)),
        ("export_v2_20240501.csv", datetime(2024, 5, 1, tzinfo=UTC)),  # the 2 is no timestamp
        ("a_20240101_b_20240301.csv", datetime(2024, 3, 1, tzinfo=UTC)),  # the last one wins
        ("roster.csv", None),
        ("roster-123456789.csv", None),  # nine digits: a number, not a date
        ("roster_20241399.csv", None),  # not a valid date
        ("roster_120240501.csv", None),  # part of a longer number
        ("roster_18991231.csv", None),  # out of any plausible range
    ],
)
def test_time_from_name(name: str, expected: datetime | None) -> None:
    assert time_from_name(name, UTC) == expected


def test_a_name_is_read_in_the_daemon_time_zone() -> None:
    assert time_from_name("r_20240701120000.csv", BERLIN) == datetime(2024, 7, 1, 10, 0, tzinfo=UTC)


def test_header_change_names_added_and_removed_columns() -> None:
    before = ["primary_email_address", "work_title", "group/Sales"]
    now = ["Primary_Email_Address", "group/Sales", "group/HR"]
    hold = header_changed(before, now, job_id=7)
    assert hold is not None and hold.code == "header_changed"
    assert "added 'group/HR'" in hold.message and "removed 'work_title'" in hold.message
    assert "orgsyncd jobs approve 7" in hold.message


def test_same_columns_in_another_order_or_case_is_no_change() -> None:
    assert header_changed(["a", "B"], ["b", "A"], job_id=1) is None
    # A results file uploaded again brings its bookkeeping columns: not a header change.
    assert header_changed(["a", "b"], ["row", "outcome", "code", "message", "a", "b"], job_id=1) is None
    assert header_changed(None, ["a"], job_id=1) is None  # no applied full file yet


def test_stale_file_only_when_older() -> None:
    new, old = datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC)
    hold = stale_file(old, new, job_id=3)
    assert hold is not None and hold.code == "stale_file"
    assert "2024-05-01 00:00:00 UTC" in hold.message and "2024-05-02 00:00:00 UTC" in hold.message
    assert stale_file(new, old, job_id=3) is None
    assert stale_file(new, new, job_id=3) is None  # the same moment is not older
    assert stale_file(old, None, job_id=3) is None  # nothing applied yet
