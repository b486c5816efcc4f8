"""Every code the source can emit is registered in orgsyncd/codes.py, and every registered code is
explained in docs/troubleshooting.md.

The codes are found by reading the source, not from a hand list: string literals in the places a
code goes (see ``_EMITTERS`` and ``_SQL_CODE``). A call that passes a code it did not spell out
itself (``Issue("error", exc.code, ...)``) must be one of the known pass-through sites below, so a
new way of producing codes makes this test fail until someone teaches it to look there too.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orgsyncd import codes
from orgsyncd.core.results import OUTCOMES

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "orgsyncd"
TROUBLESHOOTING = ROOT / codes.TROUBLESHOOTING

# Callable name -> position of its code argument (keyword "code" also counts).
_EMITTERS = {
    "FileRejected": 0,
    "RowError": 0,
    "Issue": 1,
    "Rejected": 1,
    "_mark": 0,  # the importer's "mark later rows of a group with this code"
    "write_operator_outcome": 1,
    "Hold": 0,  # a guard holds the job (core/guards.py)
}
_CODE_KEYWORDS = frozenset({"code", "error_code"})
# Codes set in SQL: assigned to err/note, or a CASE branch's result (outcomes are not codes).
_SQL_CODE = re.compile(r"(?:\b(?:err|note)\s*=\s*|\bTHEN\s+)'([a-z][a-z0-9_]*)'")
_NOT_CODES = frozenset(OUTCOMES) | {"invited", "unassigned"}  # row outcomes and learner statuses
# (module, enclosing function) of calls that hand on a code they received.
_PASS_THROUGH = {
    ("core/rows.py", "_failed"),  # Rejected(line, exc.code, ...) of a RowError
    ("jobrunner.py", "_file_failed"),  # Issue("error", exc.code, ...) of a FileRejected
    ("jobrunner.py", "write_operator_outcome"),  # Issue("error", status, ...)
    ("jobrunner.py", "dry_run"),  # {"code": exc.code} of a FileRejected
    ("errors.py", "__init__"),  # FileRejected's own constructor
    ("jobrunner.py", "_finish"),  # error_code=values.get("error_code") into the state change
    ("jobrunner.py", "_plan_and_apply"),  # error_code=held_code (assigned a literal just before)
    ("store/jobs.py", "change_state"),  # code=code of its caller, onto the job event
    ("store/claims.py", "release"),  # code=code of its caller, into change_state
    ("jobrunner.py", "_attempt_failed"),  # code=exc.code of an OrgsyncError (injected_fault)
    ("store/jobs.py", "record_change"),  # code=change.code
    ("cli.py", "jobs_show"),  # {"code": event.code} of a stored job event
    ("core/report.py", "issue_groups_from_rows"),  # IssueGroup(code=...) of stored result lines
    ("jobrunner.py", "_file_issue_groups"),  # IssueGroup(code=issue.code) of an Issue
    ("store/outbox.py", "record_job_event"),  # {"code": job.error_code or change.code} into the event
    ("jobrunner.py", "_write_results"),  # Issue("error", hold.code, ...) of a guard's Hold
    ("reverts.py", "_finish"),  # code=plan.refusal_code (revert_conflict or no_seats) onto the event
    ("reverts.py", "as_dict"),  # {"code": self.code} of the revert's result
}
_HEADING = re.compile(r"^###\s+`([a-z][a-z0-9_]*)`\s*$", re.MULTILINE)


@dataclass
class Found:
    codes: dict[str, str] = field(default_factory=dict)  # code -> first place seen
    dynamic: set[tuple[str, str]] = field(default_factory=set)  # (module, function)
    class_codes: dict[str, str] = field(default_factory=dict)


def scan_source(text: str, module: str, found: Found) -> None:
    tree = ast.parse(text)
    in_class_body = {id(stmt) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for stmt in c.body}
    for func, node in _walk_with_function(tree):
        where = f"{module}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            _scan_call(node, module, func, where, found)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "code":
                    _take(value, module, func, where, found)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if _is_code_attribute(stmt):
                    found.class_codes.setdefault(stmt.value.value, where)  # type: ignore[attr-defined]
        elif isinstance(node, ast.Assign) and id(node) not in in_class_body:
            local = any(_names_a_code(t) for t in node.targets)
            if local and isinstance(node.value, ast.Constant | ast.IfExp):  # x_code = "a" if b else None
                _take(node.value, module, func, where, found)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for match in _SQL_CODE.finditer(node.value):
                if match.group(1) not in _NOT_CODES:
                    found.codes.setdefault(match.group(1), where)


def _names_a_code(target: ast.expr) -> bool:
    """A variable such as ``code`` or ``held_code``."""
    return isinstance(target, ast.Name) and (target.id == "code" or target.id.endswith("_code"))


def _is_code_attribute(stmt: ast.stmt) -> bool:
    """``code = "literal"`` in a class body."""
    return (
        isinstance(stmt, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "code" for t in stmt.targets)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _scan_call(node: ast.Call, module: str, func: str, where: str, found: Found) -> None:
    name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
    if name in _EMITTERS:
        at = _EMITTERS[name]
        if len(node.args) > at and not isinstance(node.args[at], ast.Starred):
            _take(node.args[at], module, func, where, found)
    for keyword in node.keywords:
        if keyword.arg in _CODE_KEYWORDS:
            _take(keyword.value, module, func, where, found)


def _take(value: ast.expr, module: str, func: str, where: str, found: Found) -> None:
    if isinstance(value, ast.Constant):
        if isinstance(value.value, str):
            found.codes.setdefault(value.value, where)
        return  # None: no code
    if isinstance(value, ast.IfExp):  # "a" if held else None
        _take(value.body, module, func, where, found)
        _take(value.orelse, module, func, where, found)
        return
    found.dynamic.add((module, func))


def _walk_with_function(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    out: list[tuple[str, ast.AST]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            out.append((inner, child))
            visit(child, inner)

    visit(tree, "<module>")
    return out


@pytest.fixture(scope="module")
def found() -> Found:
    result = Found()
    for path in sorted(SOURCE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        scan_source(path.read_text(encoding="utf-8"), path.relative_to(SOURCE).as_posix(), result)
    return result


def documented() -> list[str]:
    return _HEADING.findall(TROUBLESHOOTING.read_text(encoding="utf-8"))


def test_every_emitted_code_is_registered(found: Found) -> None:
    missing = {code: where for code, where in found.codes.items() if code not in codes.CODES}
    assert not missing, f"add these to orgsyncd/codes.py CODES (code: where it is emitted): {missing}"


def test_every_exception_code_is_registered_or_sentence_only(found: Found) -> None:
    known = codes.CODES.keys() | codes.SENTENCE_ONLY
    missing = {code: where for code, where in found.class_codes.items() if code not in known}
    assert not missing, f"register these exception codes in orgsyncd/codes.py: {missing}"


def test_codes_are_only_passed_on_at_known_places(found: Found) -> None:
    unknown = found.dynamic - _PASS_THROUGH
    assert not unknown, (
        f"these functions pass a code that is not a literal: {sorted(unknown)}; make it a literal "
        "at the call, or add the site to _PASS_THROUGH if it only hands on a registered code"
    )


def test_the_scan_finds_the_codes_of_each_kind_of_place(found: Found) -> None:
    # One per way of emitting: FileRejected, Issue, RowError, Rejected, _mark, error_code=, SQL.
    for code in ("encoding_error", "unknown_column", "invalid_email", "field_count", "duplicate_in_file"):
        assert code in found.codes
    for code in (
        "internal_error",
        "threshold_exceeded",
        "rejected",
        "email_taken",
        "no_seats",
        "uid_adopted",
    ):
        assert code in found.codes
    assert "config_error" in found.class_codes


def test_scan_of_a_new_emitter() -> None:
    result = Found()
    source = (
        "class StaleFile(FileRejected):\n    code = 'stale_file'\n"
        "def f(exc):\n"
        "    raise FileRejected('header_changed', 'm')\n"
        "def g(conn):\n"
        "    conn.run(\"UPDATE pl SET err = 'revert_conflict' WHERE x\")\n"
        "    conn.run(\"CASE WHEN a THEN 'signature_invalid' WHEN b THEN 'created' END\")\n"
        "    held_code = 'empty_roster' if conn else None\n"
        "    return Issue('error', code_of(conn), 'm')\n"
    )
    scan_source(source, "x.py", result)
    assert set(result.codes) == {"header_changed", "revert_conflict", "signature_invalid", "empty_roster"}
    assert set(result.class_codes) == {"stale_file"}
    assert result.dynamic == {("x.py", "g")}


def test_every_registered_code_has_a_troubleshooting_entry() -> None:
    entries = documented()
    missing = [code for code in codes.CODES if code not in entries]
    assert not missing, f"add a '### `code`' entry to {codes.TROUBLESHOOTING} for: {missing}"


def test_troubleshooting_has_one_entry_per_code_and_none_for_unknown_codes() -> None:
    entries = documented()
    repeated = sorted({code for code in entries if entries.count(code) > 1})
    assert not repeated, f"entries appear twice: {repeated}"
    stale = [code for code in entries if code not in codes.CODES]
    assert not stale, f"entries for codes orgsyncd does not have (register them or remove): {stale}"


def test_entries_say_what_to_change() -> None:
    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    bodies = re.split(r"^###\s+", text, flags=re.MULTILINE)[1:]
    for body in bodies:
        code, _, rest = body.partition("\n")
        assert len(rest.split()) >= 12, f"entry {code} is too short to explain anything"


def test_meanings_are_one_line() -> None:
    for code, entry in codes.CODES.items():
        assert entry.meaning and "\n" not in entry.meaning and len(entry.meaning) <= 100, code
        assert entry.scope in (codes.FILE, codes.ROW, codes.JOB), code
