"""Progress of a running job: phases in order, rows done of total, an ETA, in a file outside the
import's transaction that ``jobs show`` reads; gone when the job ends."""

from __future__ import annotations

from typing import Any

import pytest

from orgsyncd import jobprogress as progress_module
from orgsyncd.jobprogress import JobProgress, read_progress, status_line
from tests.helpers import LIC, Env, roster

ROWS = 20_000  # more than one progress step (16,384 lines) of the reader and the results


def test_a_job_reports_its_phases_rows_and_eta(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    written = JobProgress._write

    def record(self: JobProgress, force: bool = False) -> None:
        written(self, force=True)  # every update, so the test sees them all
        assert self.path is not None
        on_disk = read_progress(self.path)
        assert on_disk is not None and not on_disk["stale"]
        seen.append(on_disk)

    monkeypatch.setattr(JobProgress, "_write", record)
    text = roster(
        ["primary_email_address", f"{LIC}_status"], [[f"p{i}@example.com", "active"] for i in range(ROWS)]
    )
    summary = env.run(text)
    assert summary.counts["created"] == ROWS
    phases = [s["phase"] for s in seen]
    assert phases[0] == "staging" and phases[-1] == "writing_results"
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        "staging", "planning", "applying", "writing_results"
    ]  # fmt: skip
    staging = [s for s in seen if s["phase"] == "staging" and s["bytes_done"]]
    assert staging and all(s["eta_s"] is not None for s in staging)
    assert staging[-1]["bytes_done"] == staging[-1]["bytes_total"] == len(text.encode())
    assert [s["rows_total"] for s in seen if s["phase"] == "planning"] == [ROWS]
    writing = [s for s in seen if s["phase"] == "writing_results"]
    assert writing[-1]["rows_done"] == ROWS and writing[-1]["rows_total"] == ROWS
    assert [s["rows_done"] for s in writing] == sorted(s["rows_done"] for s in writing)
    assert not list(env.dirs.spool.glob("*.progress.json"))  # removed when the job ended
    assert env.service.runner.running == {}


def test_the_status_line_says_which_tenant_and_how_far() -> None:
    tracker = JobProgress(job_id=3, tenant="acme", file="day1.csv", size=1000, path=None)
    tracker.phase_started("writing_results", rows_total=1_000_000)
    tracker.rows(412_000)
    line = status_line(tracker.snapshot())
    assert line.startswith("acme: writing results day1.csv, 412,000 of 1,000,000 rows, ~")
    assert line.endswith(" s left")
    tracker.phase_started("applying")
    assert status_line(tracker.snapshot()) == "acme: applying day1.csv, 1,000,000 rows"


def test_a_progress_file_not_updated_for_a_while_is_marked_stale(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "7.progress.json"
    tracker = JobProgress(job_id=7, tenant="acme", file="f.csv", size=10, path=path)
    tracker.phase_started("planning", rows_total=5)
    data = read_progress(path)
    assert data is not None and data["phase"] == "planning" and data["stale"] is False
    monkeypatch.setattr(progress_module, "STALE_AFTER_S", -1.0)
    assert read_progress(path)["stale"] is True  # type: ignore[index]
