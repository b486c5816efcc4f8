"""Fuzz target for the intake path, reader -> header -> row validation, as an import runs it.

For any bytes at all, and for near-roster text built from the pieces real files are made of
(known and look-alike column names, quotes, delimiters, line ends, BOMs, formulas, odd Unicode),
the path either rejects the file with a registered file code, or yields one outcome per record:
a staged row or a row rejection with a registered row code. Nothing else escapes, nothing hangs.

150 examples of each kind run by default; ``--run-slow`` adds 5,000 mixed ones
(``ORGSYNCD_FUZZ_EXAMPLES`` sets that number).
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orgsyncd.codes import CODES, FILE, ROW
from orgsyncd.core.header import HeaderRules, analyse_header
from orgsyncd.core.reader import read_records
from orgsyncd.core.rows import Rejected, RowRules, RowValidator, roster_rows
from orgsyncd.errors import FileRejected

LIC = "lic_a"
_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
# deadline=None: a loaded CI machine is slow, not wrong (a hang still fails the run's timeouts)
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=_HEALTH)
THOROUGH = settings(QUICK, max_examples=int(os.environ.get("ORGSYNCD_FUZZ_EXAMPLES", "5000")))

COLUMNS = [
    "unique_user_id",
    "primary_email_address",
    "primary_email",
    "email",
    "preferred_first_name",
    "preferred_last_name",
    "work_title",
    f"{LIC}_status",
    "active",
    "lic_b_status",
    "group/HR",
    "group/Engineering",
    "group/",
    "row",
    "outcome",
    "Primary_Email_Address ",
    "email\u200b",
    "еmail",  # Cyrillic е
    "",
]
CELLS = [
    "",
    " ",
    "a@example.com",
    "A@Example.COM",
    "jоhn@example.com",  # Cyrillic о
    "ｊohn@example.com",
    "not-an-email",
    "active",
    "inactive",
    "Active",
    "1",
    "0",
    "yes",
    '=HYPERLINK("x")',
    "'=1+1",
    "+1",
    "x" * 300,
    "Zoë",
    "李",
    "\u202eevil",
    '"',
    '""',
    "a,b",
    "line\nbreak",
]
DELIMITERS = [",", ";", "\t", "|"]
ENDINGS = ["\n", "\r\n", "\r"]
BOMS = [b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE]


def _cell(draw: Any) -> str:
    cell = draw(st.one_of(st.sampled_from(CELLS), st.text(max_size=12)))
    if any(ch in cell for ch in ',;\t|"\n\r') and draw(st.booleans()):
        return '"' + cell.replace('"', '""') + '"'
    return cell


@st.composite
def near_rosters(draw: Any) -> bytes:
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=8))
    delimiter = draw(st.sampled_from(DELIMITERS)) if draw(st.integers(0, 4)) == 0 else ","
    ending = draw(st.sampled_from(ENDINGS))
    width = len(header)
    lines = [delimiter.join(header)]
    for _ in range(draw(st.integers(0, 8))):
        n = width if draw(st.integers(0, 5)) else draw(st.integers(0, width + 2))
        lines.append(delimiter.join(_cell(draw) for _ in range(n)))
    text = ending.join(lines) + (ending if draw(st.booleans()) else "")
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode("utf-8")
    return draw(st.sampled_from(BOMS)) + data if encoding == "utf-8" else data


def intake(path: Path) -> list[object]:
    """What an import does with a file before touching the database."""
    records = read_records(path)
    first = next(records, None)
    if first is None:
        return []
    layout = analyse_header(first[1], HeaderRules([LIC, "lic_b"], LIC))
    validator = RowValidator(layout, RowRules("unchanged", LIC))
    outcomes: list[object] = list(layout.warnings)
    outcomes += [validator.validate(line, fields) for line, fields in roster_rows(records, layout)]
    return outcomes


def _check(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        outcomes = intake(path)
    except FileRejected as exc:
        assert exc.code in CODES and CODES[exc.code].scope == FILE, (exc.code, str(exc))
        assert str(exc).strip(), exc.code
        return
    lines = []
    for outcome in outcomes:
        if isinstance(outcome, Rejected):
            assert outcome.err in CODES and CODES[outcome.err].scope == ROW, outcome
            assert outcome.msg.strip()
            lines.append(outcome.line)
        elif isinstance(outcome, tuple):
            line, _uid, email = outcome[:3]
            assert isinstance(email, str) and "@" in email, outcome
            lines.append(line)
        else:  # a header warning
            assert getattr(outcome, "code", None) in CODES, outcome
    assert lines == sorted(set(lines)), lines  # one outcome per record, in file order


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "fuzz.csv"


@QUICK
@given(data=st.binary(max_size=4096))
def test_any_bytes_are_rejected_with_a_file_code_or_read_row_by_row(target: Path, data: bytes) -> None:
    _check(target, data)


@QUICK
@given(data=near_rosters())
def test_near_rosters_get_registered_codes_and_one_outcome_per_row(target: Path, data: bytes) -> None:
    _check(target, data)


@pytest.mark.slow
@THOROUGH
@given(data=st.one_of(st.binary(max_size=16384), near_rosters()))
def test_many_fuzzed_files(target: Path, data: bytes) -> None:
    """The same over 5,000 examples (--run-slow; ORGSYNCD_FUZZ_EXAMPLES to change)."""
    _check(target, data)


def test_the_target_can_fail(target: Path) -> None:
    """The checks above see a wrong outcome: a row with a bad email must not be staged."""
    target.write_bytes(b"primary_email_address,lic_a_status\nnot-an-email,active\na@example.com,active\n")
    outcomes = intake(target)
    assert isinstance(outcomes[0], Rejected) and outcomes[0].err == "invalid_email"
    assert isinstance(outcomes[1], tuple) and outcomes[1][2] == "a@example.com"
