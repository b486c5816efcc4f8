"""The HTML report of a job, written beside the results file by a real import, and shown by a real
browser (Debian's chromium, headless)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

import pytest

from orgsyncd.core.results import Summary
from orgsyncd.errors import InjectedFault
from tests.helpers import LIC, Env, roster

HEADER = ["primary_email_address", "preferred_last_name", f"{LIC}_status"]


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def report_text(env: Env, summary: Summary) -> str:
    path = env.dirs.results / f"{summary.file.rsplit('.csv', 1)[0]}.{summary.job_id}.report.html"
    parser = _Text()
    parser.feed(path.read_text(encoding="utf-8"))
    return " ".join(" ".join(parser.parts).split())


def test_report_has_counts_seats_before_and_after_and_errors_by_code(env: Env) -> None:
    env.tenant_cfg.update(licenses={LIC: 4, "pro_license": 0})
    env.run(roster(HEADER, [["a@example.com", "A", "active"]]))
    rows = [
        ["b@example.com", "B", "active"],
        ["c@example.com", "<script>alert(1)</script>", "active"],
        ["not-an-email", "X", "active"],
        ["also@@bad", "Y", "active"],
        ["d@example.com", "D", "active"],
        ["e@example.com", "E", "active"],  # the fifth seat of four
    ]
    summary = env.run(roster(HEADER, rows), name="day2.csv")
    assert summary.status == "partially_succeeded"
    text = report_text(env, summary)
    assert "Partially succeeded" in text and "3 created" in text and "3 errors" in text
    # one learner held a seat before the job, four after: the limit
    assert re.search(rf"{LIC} 1 4 \+3 4 100%", text), text
    assert re.search(r"pro_license 0 0 0 unlimited", text)
    assert "invalid_email 2 line(s)" in text
    assert "4 primary_email_address 'not-an-email' is not a valid email address" in text
    assert "no_seats 1 line(s)" in text
    html = (env.dirs.results / f"day2.{summary.job_id}.report.html").read_text(encoding="utf-8")
    assert "<script>" not in html  # the roster's value is nowhere in it as markup


def test_a_held_job_report_says_why_and_what_approval_would_do(env: Env) -> None:
    env.run(roster(HEADER, [[f"p{i}@example.com", "P", "active"] for i in range(10)]))
    held = env.run(roster(HEADER, [[f"p{i}@example.com", "P", "active"] for i in range(5)]), mode="full")
    assert held.status == "held"
    text = report_text(env, held)
    assert "Held: waiting for a decision" in text
    assert "would deactivate 5 of 10 licensed learners" in text
    assert "5 unchanged, 5 deactivated" in text
    assert re.search(rf"{LIC} 10 10 0", text)  # nothing applied


def test_a_rejected_file_gets_a_report_with_its_code(env: Env) -> None:
    summary = env.run("", name="empty.csv")
    assert summary.status == "failed"
    text = report_text(env, summary)
    assert "Failed" in text and "empty_file" in text


def test_the_report_appears_only_once_the_job_committed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    (env.dirs.inbox / "a.csv").write_text(
        roster(HEADER, [["a@example.com", "A", "active"]]), encoding="utf-8"
    )
    env.service.scan_inboxes()
    monkeypatch.setenv("ORGSYNCD_FAULT", "before_commit")
    with pytest.raises(InjectedFault):
        env.service.run_due()
    assert not list(env.dirs.results.iterdir())
    monkeypatch.setenv("ORGSYNCD_FAULT", "after_commit")
    with pytest.raises(InjectedFault):
        env.service.run_due()
    assert not list(env.dirs.results.iterdir())  # committed, not yet moved into place
    monkeypatch.delenv("ORGSYNCD_FAULT")
    env.service.recover()
    job = env.service.jobs.recent(tenant=env.tenant)[0]
    assert (env.dirs.results / f"a.{job.id}.report.html").is_file()
    assert not list(env.dirs.spool.glob("*.tmp"))


# -- in a real browser ------------------------------------------------------------------------


@cache
def chromium() -> str | None:
    """Debian's chromium, installed once if missing (we run tests as root in CI)."""
    found = shutil.which("chromium")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        if subprocess.run(step, env=env, capture_output=True, timeout=600, check=False).returncode:
            return None
    return shutil.which("chromium")


def test_chromium_renders_the_report(env: Env, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed and could not be installed with apt-get")
    summary = env.run(roster(HEADER, [["a@example.com", "A", "active"], ["bad", "B", "active"]]))
    report = env.dirs.results / f"{summary.file[:-4]}.{summary.job_id}.report.html"
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory(prefix="osd-chromium-") as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--window-size=1000,1200", f"--screenshot={shot}", "--dump-dom", report.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    # The DOM as the browser built it: the page parsed into what we wrote, nothing blocked.
    assert "Partially succeeded" in done.stdout and "invalid_email" in done.stdout
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
