"""Where an orgsyncd command's database time goes: runs the CLI in this process with a timer on
every SQL statement SQLAlchemy sends, then prints the statements by total time.

    .venv/bin/python bench/sql_profile.py [--top 25] -- --config orgsyncd.toml import FILE --tenant T

Each line: total seconds, calls, and the statement's first characters (whitespace folded); then
the command's wall time and how much of it no timed statement accounts for (Python, and what goes
past SQLAlchemy: PostgreSQL's COPY of the staging rows). The time is the client's: it includes the
round trip and, on PostgreSQL, the server's work for the statement.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

_totals: dict[str, list[float]] = {}
_WS = re.compile(r"\s+")


def _before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
    conn.info.setdefault("sql_profile_started", []).append(time.perf_counter())


def _after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
    took = time.perf_counter() - conn.info["sql_profile_started"].pop()
    key = _WS.sub(" ", statement).strip()[:150]
    entry = _totals.setdefault(key, [0.0, 0])
    entry[0] += took
    entry[1] += 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="orgsyncd's arguments, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    event.listen(Engine, "before_cursor_execute", _before)
    event.listen(Engine, "after_cursor_execute", _after)
    from orgsyncd.cli import main as cli

    started = time.perf_counter()
    code = 0
    try:
        cli.main(command, standalone_mode=False)
    except SystemExit as exc:
        code = int(exc.code or 0)
    wall = time.perf_counter() - started
    timed = sum(total for total, _ in _totals.values())
    ranked = sorted(_totals.items(), key=lambda item: -item[1][0])
    print(f"\n{'seconds':>8} {'calls':>6}  statement", file=sys.stderr)
    for statement, (total, calls) in ranked[: args.top]:
        print(f"{total:8.2f} {int(calls):6d}  {statement}", file=sys.stderr)
    rest = sum(total for _, (total, _) in ranked[args.top :])
    print(f"{rest:8.2f} {'':6}  ({len(ranked) - args.top} other statements)", file=sys.stderr)
    print(
        f"wall {wall:.2f} s; timed statements {timed:.2f} s; the rest {wall - timed:.2f} s "
        "(Python, start-up excluded, and COPY)",
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
