"""The plan of a held job, read from the planner's tables (``pl``, ``absent``) with the learners'
current state: two streamed queries, so a held million-row file costs no memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, text

from orgsyncd.core.changes import Change, Values

BATCH = 20_000
_KEYS = ("email", "uid", "first_name", "last_name", "title", "status", "license")
_CURRENT = "l.email, l.uid, l.first_name, l.last_name, l.title, l.status, l.license_type"
_NEW = "p.n_email, p.n_uid, p.n_first, p.n_last, p.n_title, p.n_status, p.n_lic"


def stream(conn: Connection, query: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Rows of *query* one batch at a time (a server-side cursor on PostgreSQL; sqlite3 cursors
    step lazily by themselves)."""
    if conn.dialect.name == "postgresql":
        statement = text(query).execution_options(stream_results=True, yield_per=BATCH)
        yield from conn.execute(statement, params or {})
        return
    yield from conn.connection.driver_connection.execute(query, params or {})  # type: ignore[union-attr]


def plan_changes(
    conn: Connection, groups: Sequence[str], mode: str, inactive_group: str | None, sources: int = 0
) -> Iterator[Change]:
    """Every learner the plan would change: rows of the file in line order, then (full mode) the
    learners it leaves out. ``sources``: how many groups_from columns the plan has."""
    deltas = "".join(f", p.d{i}" for i in range(len(groups)))
    # groups_from: the group a column's new value joins, and the one its old value leaves.
    deltas += "".join(
        f", CASE WHEN p.j{k} = 1 THEN p.s{k} END, (SELECT g.name FROM learner_group g WHERE g.id = p.o{k})"
        for k in range(sources)
    )
    rows = stream(
        conn,
        f"SELECT p.is_new, {_CURRENT}, {_NEW}{deltas} FROM pl p "
        "LEFT JOIN learner l ON l.id = p.lid AND p.is_new = 0 WHERE p.err IS NULL "
        "AND p.outcome IN ('created', 'updated', 'deactivated', 'reactivated') ORDER BY p.line",
    )
    for is_new, *cells in rows:
        before = None if is_new else _values(cells[:7])
        after = _values(cells[7:14])
        flags, moved = cells[14 : 14 + len(groups)], cells[14 + len(groups) :]
        change = _row_change(before, after, groups, flags, inactive_group)
        if moved and not (change.note and inactive_group):  # a move to the inactive group overrules
            joins = [(str(name), 1) for name in moved[0::2] if name]
            leaves = [(str(name), -1) for name in moved[1::2] if name]
            change = Change(change.before, change.after, [*change.groups, *leaves, *joins], change.note)
        yield change
    if mode != "full":
        return
    absent = stream(conn, f"SELECT {_CURRENT} FROM absent a JOIN learner l ON l.id = a.lid ORDER BY l.id")
    for cells in absent:
        before = _values(cells)
        after = {**before, "status": "deactivated", "license": None}
        moves = [(inactive_group, 1)] if inactive_group else []
        yield Change(before, after, moves, note=_note("not in the full file", inactive_group))


def _row_change(
    before: Values | None,
    after: Values,
    groups: Sequence[str],
    deltas: Sequence[int | None],
    inactive_group: str | None,
) -> Change:
    gone = before is not None and before["status"] != "deactivated" and after["status"] == "deactivated"
    back = before is not None and before["status"] == "deactivated" and after["status"] != "deactivated"
    if gone and inactive_group:  # the move to the inactive group overrules the file's groups
        return Change(before, after, [(inactive_group, 1)], note=_note(None, inactive_group))
    moves = [(name, int(delta)) for name, delta in zip(groups, deltas, strict=True) if delta]
    if back and inactive_group:
        moves.append((inactive_group, -1))
    return Change(before, after, moves)


def _note(reason: str | None, inactive_group: str | None) -> str | None:
    parts = [reason] if reason else []
    if inactive_group:
        parts.append(f"leaves its other groups for {inactive_group!r}")
    return ", ".join(parts) or None


def _values(cells: Sequence[Any]) -> Values:
    return dict(zip(_KEYS, cells, strict=True))
