"""Per-learner change lines for people: the plan file of a held job and the results of a revert.

Both list one learner per line with its identity and what changes, as ``field: before -> after``
in the roster's own column names (``work_title: Engineer -> Lead``, ``<licence>_status: active ->
inactive``, ``group/HR: 1 -> 0``), so the HRIS side reads them in its own terms.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from orgsyncd.core.header import EMAIL, FIRST, LAST, TITLE, UID
from orgsyncd.core.results import escape

PLAN_HEADER = ("action", UID, EMAIL, FIRST, LAST, "changes")
REVERT_HEADER = ("outcome", "code", "message", UID, EMAIL, FIRST, LAST, "changes")
EMPTY = "(empty)"
# The learner's own fields, by the roster column that sets them.
FIELDS = ((EMAIL, "email"), (UID, "uid"), (FIRST, "first_name"), (LAST, "last_name"), (TITLE, "title"))

Values = dict[str, str | None]  # email, uid, first_name, last_name, title, status, license


@dataclass(frozen=True, slots=True)
class Change:
    """One learner: its state before and after, and the group memberships that flip."""

    before: Values | None  # None: the learner is new
    after: Values
    groups: Sequence[tuple[str, int]] = ()  # (group name, +1 joins / -1 leaves)
    note: str | None = None  # said after the changes ("not in the full file")


def action(change: Change) -> str:
    """create, update, deactivate, reactivate or reassign (a licence moves to another type)."""
    before, after = change.before, change.after
    if before is None:
        return "create"
    if before["status"] != "deactivated" and after["status"] == "deactivated":
        return "deactivate"
    if before["status"] == "deactivated" and after["status"] != "deactivated":
        return "reactivate"
    if before["license"] and after["license"] and before["license"] != after["license"]:
        return "reassign"
    return "update"


def describe(change: Change) -> str:
    """``field: before -> after`` for every field that changes, joined by ``; ``."""
    before = change.before or dict.fromkeys(change.after)
    parts = [
        f"{column}: {_show(before.get(key))} -> {_show(change.after.get(key))}"
        for column, key in FIELDS
        if before.get(key) != change.after.get(key)
    ]
    parts += _licences(before.get("license"), change.after.get("license"))
    if change.before is not None and before.get("status") != change.after.get("status"):
        parts.append(f"status: {_show(before.get('status'))} -> {_show(change.after.get('status'))}")
    parts += [
        f"group/{name}: {0 if delta > 0 else 1} -> {1 if delta > 0 else 0}" for name, delta in change.groups
    ]
    if change.note:
        parts.append(f"({change.note})")
    return "; ".join(parts)


def _licences(before: str | None, after: str | None) -> list[str]:
    if before == after:
        return []
    parts = []
    if before:
        parts.append(f"{before}_status: active -> inactive")
    if after:
        parts.append(f"{after}_status: inactive -> active")
    return parts


def _show(value: str | None) -> str:
    return value if value else EMPTY


def identity(values: Values) -> list[str]:
    return [values.get(key) or "" for key in ("uid", "email", "first_name", "last_name")]


class ChangeWriter:
    """A CSV of change lines, written as they stream in (a held million-row file is fine)."""

    def __init__(self, out: TextIO, header: Sequence[str]) -> None:
        self.writer = csv.writer(out, lineterminator="\r\n")
        self.writer.writerow(header)
        self.count = 0

    def row(self, cells: Iterable[str]) -> None:
        self.writer.writerow([escape(cell) for cell in cells])
        self.count += 1

    def plan(self, change: Change) -> None:
        """A plan line: who, and what would change (identity as it is now, new for a create)."""
        who = change.before if change.before is not None else change.after
        self.row([action(change), *identity(who), describe(change)])
