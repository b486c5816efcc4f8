"""configure_logging(): JSON lines for journald, context, stdlib routing, no leaked secrets."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
import structlog.testing
from structlog.contextvars import bound_contextvars

from orgsyncd.logging import REDACTED, configure_logging, guarding, machine_readable

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging() changes process-wide state; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("asyncssh", "sqlalchemy", "apscheduler", "alembic", "watchdog")
    libraries = {n: logging.getLogger(n).level for n in names}
    yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in libraries.items():
        logging.getLogger(name).setLevel(old)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def lines(out: io.StringIO) -> Lines:
    configure_logging(level="info", stream=out)
    return lambda: [json.loads(line) for line in out.getvalue().splitlines()]


def test_one_json_object_per_line_with_event_level_timestamp(lines: Lines) -> None:
    log = structlog.get_logger("orgsyncd.test")
    log.info("import_finished", tenant="acme", rows=3)
    log.warning("disk_low", free_mb=12)

    first, second = lines()
    assert first["event"] == "import_finished"
    assert first["level"] == "info"
    assert (first["tenant"], first["rows"]) == ("acme", 3)
    assert second["level"] == "warning"
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_level_filters_structlog_events(out: io.StringIO) -> None:
    configure_logging(level="warning", stream=out)
    structlog.get_logger().info("hidden")
    structlog.get_logger().error("shown")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["shown"]


def test_bound_contextvars_appear_in_structlog_and_stdlib_lines(lines: Lines) -> None:
    with bound_contextvars(tenant="acme", job_id=42, file="full_2024.csv", peer="192.0.2.7"):
        structlog.get_logger().info("row_batch")
        logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed")
    structlog.get_logger().info("after")

    inside_structlog, inside_stdlib, after = lines()
    for line in (inside_structlog, inside_stdlib):
        assert line["tenant"] == "acme"
        assert line["job_id"] == 42
        assert line["file"] == "full_2024.csv"
        assert line["peer"] == "192.0.2.7"
    assert "tenant" not in after


def test_stdlib_loggers_go_through_the_same_renderer(lines: Lines) -> None:
    logging.getLogger("apscheduler.executors").warning("Job %s missed", "hourly")
    logging.getLogger("watchdog.observers").error("inotify limit")

    aps, wd = lines()
    assert aps["event"] == "Job hourly missed"
    assert aps["logger"] == "apscheduler.executors"
    assert aps["level"] == "warning"
    assert "timestamp" in aps
    assert (wd["logger"], wd["level"]) == ("watchdog.observers", "error")


@pytest.mark.parametrize(
    "library", ["alembic.runtime.migration", "apscheduler.scheduler", "watchdog", "asyncssh"]
)
def test_library_chatter_is_held_at_warning_unless_debug(out: io.StringIO, library: str) -> None:
    configure_logging(level="info", stream=out)
    logging.getLogger(library).info("Context impl SQLiteImpl.")
    logging.getLogger(library).warning("worth knowing")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["worth knowing"]

    configure_logging(level="debug", stream=out)
    logging.getLogger(library).info("now shown")
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "now shown"


def test_asyncssh_chatter_is_held_at_warning(lines: Lines) -> None:
    ssh = logging.getLogger("asyncssh")
    ssh.info("[conn=0] Accepted SSH client connection")
    ssh.warning("[conn=0] Auth failed")

    assert [(x["logger"], x["event"]) for x in lines()] == [("asyncssh", "[conn=0] Auth failed")]


def test_sqlalchemy_statements_stay_hidden_even_at_debug(out: io.StringIO) -> None:
    configure_logging(level="debug", stream=out)
    # Engine INFO lines carry SQL parameters, i.e. roster data.
    logging.getLogger("sqlalchemy.engine.Engine").info("[generated] ('ann@example.com',)")
    structlog.get_logger().debug("debug_visible")

    events = [json.loads(x)["event"] for x in out.getvalue().splitlines()]
    assert events == ["debug_visible"]


def _fail_with_secret_in_a_local() -> None:
    roster_row = "ann@example.com;Ann;Secret-Lastname-7731"  # noqa: F841 - must not be logged
    raise ValueError("bad header")


def test_exception_has_traceback_but_no_local_variables(lines: Lines) -> None:
    try:
        _fail_with_secret_in_a_local()
    except ValueError:
        structlog.get_logger().exception("job_failed")
        logging.getLogger("apscheduler").exception("Job raised")

    for line in lines():
        assert "Secret-Lastname-7731" not in json.dumps(line)
        assert "Traceback (most recent call last)" in line["exception"]
        assert "ValueError: bad header" in line["exception"]
        assert "_fail_with_secret_in_a_local" in line["exception"]


def test_console_exception_has_no_local_variables(out: io.StringIO) -> None:
    configure_logging(json=False, stream=out)
    try:
        _fail_with_secret_in_a_local()
    except ValueError:
        structlog.get_logger().exception("job_failed")

    text = out.getvalue()
    assert "job_failed" in text
    assert "ValueError: bad header" in text
    assert "Secret-Lastname-7731" not in text


def test_console_renderer_is_human_readable(out: io.StringIO) -> None:
    configure_logging(json=False, stream=out)
    structlog.get_logger().info("sftp_listening", port=2222)

    text = out.getvalue()
    assert "sftp_listening" in text
    assert "port=2222" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_secrets_and_rows_are_masked(lines: Lines) -> None:
    nested = {"host": "db", "password": "pg-pass"}
    structlog.get_logger().info(
        "config_loaded",
        password="hunter2",
        passphrase="open sesame",
        private_key="-----BEGIN OPENSSH PRIVATE KEY-----",
        secret="s3",
        row={"email": "ann@example.com"},
        db_password="pg-pass",
        database=nested,
        tenant="acme",
    )

    (line,) = lines()
    for key in ("password", "passphrase", "private_key", "secret", "row", "db_password"):
        assert line[key] == REDACTED
    assert line["database"] == {"host": "db", "password": REDACTED}
    assert line["tenant"] == "acme"
    assert nested["password"] == "pg-pass", "the caller's dict must not be modified"
    for leaked in ("hunter2", "open sesame", "BEGIN OPENSSH", "ann@example.com", "pg-pass"):
        assert leaked not in json.dumps(line)


def test_stdlib_extra_fields_do_not_bypass_redaction(lines: Lines) -> None:
    with bound_contextvars(password="from-context"):
        logging.getLogger("asyncssh").warning("auth")

    (line,) = lines()
    assert line["password"] == REDACTED


def test_calling_twice_does_not_duplicate_lines(out: io.StringIO) -> None:
    configure_logging(stream=out)
    configure_logging(stream=out)
    structlog.get_logger().info("once")
    logging.getLogger("apscheduler").warning("once too")

    assert len(out.getvalue().splitlines()) == 2


def test_reconfigure_switches_stream(out: io.StringIO) -> None:
    first = io.StringIO()
    configure_logging(stream=first)
    configure_logging(stream=out)
    structlog.get_logger().info("moved")

    assert first.getvalue() == ""
    assert json.loads(out.getvalue())["event"] == "moved"


def test_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()
    structlog.get_logger().info("to_stdout")

    captured = capsys.readouterr()
    assert json.loads(captured.out)["event"] == "to_stdout"
    assert captured.err == ""


def test_python_warnings_become_log_lines(lines: Lines) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("legacy option", UserWarning, stacklevel=1)

    (line,) = lines()
    assert line["logger"] == "py.warnings"
    assert "legacy option" in line["event"]


def test_unknown_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging(level="loud")


def test_capture_logs_still_works_after_configuring(out: io.StringIO) -> None:
    # Other modules' tests assert events with capture_logs(); a cached logger would bypass it.
    log = structlog.get_logger("orgsyncd.service")
    configure_logging(stream=out)
    log.info("before_capture")
    with structlog.testing.capture_logs() as captured:
        log.info("job_queued", tenant="acme")

    assert captured == [{"event": "job_queued", "tenant": "acme", "log_level": "info"}]
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["before_capture"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "environment", "expected"),
    [
        (True, {}, False),  # a person at a terminal
        (False, {}, True),  # a pipe or a file
        (True, {"INVOCATION_ID": "a1b2"}, True),  # systemd, even on a tty
        (True, {"JOURNAL_STREAM": "8:1234"}, True),
    ],
)
def test_json_off_a_terminal_and_under_systemd(
    monkeypatch: pytest.MonkeyPatch, tty: bool, environment: dict[str, str], expected: bool
) -> None:
    for name in ("INVOCATION_ID", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert machine_readable(_Tty() if tty else io.StringIO()) is expected


def test_log_lines_are_written_around_a_guarded_line(out: io.StringIO) -> None:
    configure_logging(level="info", stream=out)
    calls: list[str] = []

    class Guard:
        def clear(self) -> None:
            calls.append("clear")
            out.write("<cleared>")

        def redraw(self) -> None:
            calls.append("redraw")
            out.write("<bar>")

    with guarding(Guard()):
        structlog.get_logger().info("during")
    structlog.get_logger().info("after")
    assert calls == ["clear", "redraw"]
    text = out.getvalue()
    assert text.startswith("<cleared>{") and '"during"' in text.split("<bar>")[0]
    assert '"after"' in text.split("<bar>")[1]
