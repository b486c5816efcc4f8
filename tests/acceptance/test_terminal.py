"""What a person at a terminal reads: the CLI and the daemon under a real pseudo-terminal.

A small screen model (carriage return, erase-line, newline) turns what was written into the lines
a terminal would show, so a log line written into a progress bar, a bar stuck below 100 % or a
sentence said twice are visible to the assertions as they are to a reader.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import clean_env, free_port
from tests.helpers import LIC, roster

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminals as on Linux")

HEADER = ["primary_email_address", "preferred_first_name", f"{LIC}_status"]
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TIMESTAMP = re.compile(r"\d\d:\d\d:\d\d ")  # a console log line starts with the wall-clock time


class Terminal:
    """A process on a pseudo-terminal (stdin, stdout and stderr), and what it wrote."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.raw = ""

    def read_until(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.raw:
            if time.monotonic() > deadline or (not self._read(0.2) and self.proc.poll() is not None):
                raise AssertionError(f"{needle!r} not written; the terminal shows:\n{self.raw}")
        return self.raw

    def finish(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self._read(0.2) or self.proc.poll() is None):
            pass
        os.close(self.master)
        return self.proc.wait(timeout=5)

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the other side closed
            return False
        self.raw += data.decode("utf-8", errors="replace")
        return bool(data)


def screen(raw: str) -> list[str]:
    """The lines a terminal shows after *raw*: CR goes back to the line start, erase-line clears
    it, later text overwrites earlier text; colours and cursor switches are dropped."""
    lines: list[str] = []
    line: list[str] = []
    col = 0
    for token in re.split(r"(\x1b\[2K|\x1b\[[0-9;?]*[A-Za-z]|\r\n|\r|\n)", raw):
        if token in ("\n", "\r\n"):
            lines.append("".join(line).rstrip())
            line, col = [], 0
        elif token == "\r":
            col = 0
        elif token == "\x1b[2K":
            line = [" "] * len(line)
        elif token and not _ESCAPE.fullmatch(token):
            line[col : col + len(token)] = token  # overwrite, or extend at the end
            col += len(token)
    if "".join(line).strip():
        lines.append("".join(line).rstrip())
    return [text for text in lines if text.strip()]


def cli(tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    term = Terminal([sys.executable, "-m", "orgsyncd", *args], tmp_path, clean_env())
    code = term.finish()
    return code, screen(term.raw), term.raw


def people(n: int) -> str:
    return roster(HEADER, [[f"p{i}@example.com", f"P{i}", "active"] for i in range(n)])


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "orgsyncd.toml"
    config.write_text(
        f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n\n[tenants.acme]\nlicenses = {{ {LIC} = 0 }}\n',
        encoding="utf-8",
    )
    return config


def test_import_and_export_on_a_terminal_show_a_full_bar_and_a_sentence_for_people(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    (tmp_path / "day.csv").write_text(people(5_000), encoding="utf-8")
    code, shown, raw = cli(tmp_path, "--config", config, "import", "day.csv", "--tenant", "acme")
    assert code == 0, raw
    assert shown[0].startswith("importing day.csv") and shown[0].endswith("100%"), shown
    assert shown[1] == "day.csv: succeeded (job 1, tenant acme, delta): 5000 created", shown
    assert shown[2] == f"results: {tmp_path / 'data/tenants/acme/results/day.1.results.csv'}"
    assert len(shown) == 3, shown  # no log lines, no JSON
    assert "\x1b[?25l" in raw and raw.rfind("\x1b[?25h") > raw.rfind("\x1b[?25l")  # the cursor is back
    code, shown, raw = cli(tmp_path, "--config", config, "export", "--tenant", "acme", "-o", "out.csv")
    assert code == 0, raw
    assert shown[0].startswith("exporting acme") and shown[0].endswith("100%"), shown
    assert shown[1:] == ["5000 learners written to out.csv"]


def test_a_rejected_file_is_said_once(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    (tmp_path / "bad.csv").write_text("email;name\nx@example.com;X\n", encoding="utf-8")
    code, shown, raw = cli(tmp_path, "--config", config, "import", "bad.csv", "--tenant", "acme")
    assert code == 1
    assert len(shown) == 1, shown  # the bar is erased: the sentence is all there is
    assert shown[0].startswith("orgsyncd: bad.csv was rejected (malformed_csv): the header looks semicolon")
    assert shown[0].endswith("see docs/troubleshooting.md#malformed_csv")
    assert raw.count("semicolon") == 1
    assert raw.rfind("\x1b[?25h") > raw.rfind("\x1b[?25l")  # the cursor is back


def test_log_lines_during_the_bar_go_above_it(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    (tmp_path / "day.csv").write_text(people(5_000), encoding="utf-8")
    # --debug makes the libraries talk while the bar is drawn.
    code, shown, raw = cli(tmp_path, "--config", config, "--debug", "import", "day.csv", "--tenant", "acme")
    assert code == 0, raw
    logged = [line for line in shown if _TIMESTAMP.match(line)]
    bars = [line for line in shown if "importing day.csv" in line]
    assert logged, "--debug should log something while importing"
    assert all("importing" not in line and "%" not in line for line in logged), logged
    assert bars == [bars[-1]] and bars[-1].endswith("100%"), bars  # one bar line, full
    assert shown.index(bars[-1]) > shown.index(logged[0])  # drawn again below the log lines


@pytest.mark.skipif(shutil.which("sftp") is None, reason="needs the OpenSSH client")
def test_serve_on_a_terminal_says_ready_once_with_commands_that_work_as_printed(tmp_path: Path) -> None:
    sftp_port, metrics_port = free_port(), free_port()
    env = clean_env(
        ORGSYNCD_SFTP__LISTEN=f"127.0.0.1:{sftp_port}", ORGSYNCD_METRICS__LISTEN=f"127.0.0.1:{metrics_port}"
    )
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples/day2.csv").write_text(people(2), encoding="utf-8")
    term = Terminal([sys.executable, "-m", "orgsyncd", "serve"], tmp_path, env)
    try:
        term.read_until("Stop the daemon with Ctrl-C.")
        shown = screen(term.raw)
        assert not [line for line in shown if line.lstrip().startswith("{")], shown  # no JSON
        for chatter in ("Context impl", "Adding job tentatively", "Scheduler started"):
            assert chatter not in term.raw
        assert term.raw.count("demo@127.0.0.1") == 1 and term.raw.count("is ready") == 1, term.raw
        commands = [line.strip() for line in shown if line.startswith("  ")]
        sftp, put, run_now, ls = commands
        assert sftp.startswith("sftp ") and put == "sftp> put examples/day2.csv inbox/"
        # The sftp command verbatim, plus what makes it run unattended: a batch file, no prompts.
        argv = shlex.split(sftp)
        (tmp_path / "batch").write_text(f"{put.removeprefix('sftp> ')}\n", encoding="utf-8")
        hermetic = ["-F", "/dev/null", "-b", "batch", "-o", "BatchMode=yes"]
        uploaded = subprocess.run(
            [*argv[:-1], *hermetic, argv[-1]], cwd=tmp_path, env=clean_env(), capture_output=True, timeout=30
        )
        assert uploaded.returncode == 0, uploaded.stderr
        results = tmp_path / "var/orgsyncd/tenants/demo/results"
        # run-now as printed, a line for the shell in the directory the message names.
        assert f"in {tmp_path}," in term.raw
        done = subprocess.run(
            run_now, shell=True, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "1 job(s) processed" in done.stderr, done.stderr
        assert [p.name for p in results.glob("day2.*.results.csv")], done.stdout
        assert ls == "sftp> ls results"
    finally:
        if term.proc.poll() is None:
            os.killpg(term.proc.pid, signal.SIGINT)
        assert term.finish() == 0
