"""The HTML report of one job: what a person opens to see what happened, without tools.

Self-contained on purpose (inline CSS, no script, no external asset): it is read from a
download of ``results/`` or an email attachment, often offline. Every value that came from a
roster or a config (messages echo cells) goes through ``html.escape``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from orgsyncd.core.results import OUTCOMES

EXAMPLES_PER_CODE = 5
_STATUS_TONE = {
    "succeeded": "ok",
    "partially_succeeded": "warn",
    "held": "hold",
    "failed": "bad",
    "rejected": "muted",
    "duplicate": "muted",
}
_STATUS_WORDS = {
    "succeeded": "Succeeded",
    "partially_succeeded": "Partially succeeded",
    "held": "Held: waiting for a decision",
    "failed": "Failed",
    "rejected": "Rejected",
    "duplicate": "Duplicate: not applied again",
}
_OUTCOME_WORDS = {
    "created": "created",
    "updated": "updated",
    "unchanged": "unchanged",
    "deactivated": "deactivated",
    "reactivated": "reactivated",
    "error": "errors",
    "warning": "warnings",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class IssueGroup:
    """Every line that carried one code, with the first few of them."""

    code: str
    outcome: str  # "error" or "warning"
    count: int
    examples: Sequence[tuple[int, str]]  # (line, message); line 0 is the file as a whole


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatUsage:
    license: str
    seats: int  # 0 = unlimited
    before: int
    after: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldPlan:
    """Why a job is held and what it would do if approved."""

    reason: str
    would: Mapping[str, int]  # outcome -> rows, as planned
    plan_file: str | None = None  # the plan file's name in results/, when there is one
    lines: Sequence[str] = ()  # a few lines of the plan's own summary, when there is one


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportData:
    summary: Mapping[str, Any]  # Summary.as_dict()
    seats: Sequence[SeatUsage] = ()
    issues: Sequence[IssueGroup] = ()
    held: HeldPlan | None = None
    files: Mapping[str, str] = field(default_factory=dict)  # label -> file name in results/


def render(data: ReportData) -> str:
    summary = data.summary
    title = f"{summary.get('file', '')} · job {summary.get('job_id', '')} · {summary.get('tenant', '')}"
    parts = [
        _head(title),
        _header(summary, show_message=data.held is None),
        _held(data.held) if data.held else "",
        _counts(summary),
        _seats(data.seats, summary.get("status") == "held"),
        _issues(data.issues),
        _files(data.files),
        _facts(summary),
        "</main></body></html>\n",
    ]
    return "".join(parts)


def issue_groups_from_rows(rows: Iterable[tuple[str, str, int, int, str | None]]) -> list[IssueGroup]:
    """Group (code, outcome, count, line, message) rows, already ordered, into IssueGroups."""
    groups: dict[tuple[str, str], tuple[int, list[tuple[int, str]]]] = {}
    for code, outcome, count, line, message in rows:
        _, examples = groups.setdefault((code, outcome), (count, []))
        examples.append((line, message or ""))
    return [
        IssueGroup(code=code, outcome=outcome, count=count, examples=examples)
        for (code, outcome), (count, examples) in groups.items()
    ]


# -- pieces -----------------------------------------------------------------------------------


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No request may leave the page: a report is opened from mail and downloads.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
    )


def _header(summary: Mapping[str, Any], *, show_message: bool) -> str:
    status = str(summary.get("status", ""))
    tone = _STATUS_TONE.get(status, "muted")
    words = _STATUS_WORDS.get(status, status)
    message = _headline(summary) if show_message else None
    return (
        f'<header><p class="kicker">orgsyncd · tenant {_e(summary.get("tenant"))} · '
        f"job {_e(summary.get('job_id'))}</p>"
        f"<h1>{_e(summary.get('file'))}</h1>"
        f'<p class="status {tone}">{_e(words)}</p>'
        + (f'<p class="message">{_e(message)}</p>' if message else "")
        + "</header>"
    )


def _headline(summary: Mapping[str, Any]) -> str | None:
    error = summary.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('code')}: {error.get('message')}"
    message = summary.get("message")
    return str(message) if message else None


def _held(held: HeldPlan) -> str:
    would = ", ".join(f"{n} {_OUTCOME_WORDS.get(outcome, outcome)}" for outcome, n in held.would.items() if n)
    lines = "".join(f"<li>{_e(line)}</li>" for line in held.lines)
    plan = (
        f"<p>Every learner it would change is listed in <code>{_e(held.plan_file)}</code>.</p>"
        if held.plan_file
        else ""
    )
    return (
        '<section class="held"><h2>Held: nothing was applied</h2>'
        f"<p>{_e(held.reason)}</p>"
        + (f"<p>If approved, it would apply: {_e(would)}.</p>" if would else "")
        + (f"<ul>{lines}</ul>" if lines else "")
        + plan
        + "</section>"
    )


def _counts(summary: Mapping[str, Any]) -> str:
    counts = summary.get("counts") or {}
    cells = "".join(
        f'<div class="count{" zero" if not counts.get(key) else ""} {key}">'
        f'<span class="n">{int(counts.get(key, 0)):,}</span>'
        f'<span class="label">{_e(_OUTCOME_WORDS[key])}</span></div>'
        for key in OUTCOMES
    )
    note = ""
    if summary.get("status") == "held":
        note = '<p class="note">Planned, not applied: these are what the file would do.</p>'
    extra = summary.get("deactivated_not_in_file")
    if extra:
        note += f'<p class="note">{int(extra):,} deactivated because the full file left them out.</p>'
    return f'<section><h2>Rows</h2><div class="counts">{cells}</div>{note}</section>'


def _seats(seats: Sequence[SeatUsage], held: bool) -> str:
    if not seats:
        return ""
    rows = "".join(
        f'<tr><td><code>{_e(s.license)}</code></td><td class="num">{s.before:,}</td>'
        f'<td class="num">{s.after:,}</td><td class="num">{_delta(s.after - s.before)}</td>'
        f'<td class="num">{_e(f"{s.seats:,}" if s.seats else "unlimited")}</td>'
        f'<td class="use">{_bar(s)}</td></tr>'
        for s in seats
    )
    after = "After" if not held else "After (held)"
    return (
        "<section><h2>Seats in use</h2><table><thead><tr><th>Licence type</th>"
        f'<th class="num">Before</th><th class="num">{after}</th><th class="num">Change</th>'
        f'<th class="num">Seats</th><th>Use</th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


def _delta(n: int) -> str:
    return f"+{n:,}" if n > 0 else (f"−{-n:,}" if n < 0 else "0")


def _bar(s: SeatUsage) -> str:
    if not s.seats:
        return ""
    share = min(100.0, 100.0 * s.after / s.seats)
    tone = "bad" if share >= 100 else ("warn" if share >= 90 else "ok")
    return (
        f'<span class="bar"><span class="fill {tone}" style="width:{share:.1f}%"></span></span>'
        f'<span class="pct">{share:.0f}%</span>'
    )


def _issues(groups: Sequence[IssueGroup]) -> str:
    if not groups:
        return '<section><h2>Errors and warnings</h2><p class="note">None.</p></section>'
    blocks = "".join(_issue_group(g) for g in groups)
    return f"<section><h2>Errors and warnings, by code</h2>{blocks}</section>"


def _issue_group(group: IssueGroup) -> str:
    lines = "".join(
        f'<tr><td class="num">{_e(line if line else "file")}</td><td>{_e(message)}</td></tr>'
        for line, message in group.examples
    )
    more = group.count - len(group.examples)
    rest = (
        f'<p class="note">… and {more:,} more line(s) with this code in the results file.</p>'
        if more > 0
        else ""
    )
    tone = "bad" if group.outcome == "error" else "warn"
    return (
        f'<div class="issue"><h3><span class="tag {tone}">{_e(group.outcome)}</span> '
        f'<code>{_e(group.code)}</code> <span class="times">{group.count:,} line(s)</span></h3>'
        f'<table class="lines"><thead><tr><th class="num">Line</th><th>Message</th></tr></thead>'
        f"<tbody>{lines}</tbody></table>{rest}</div>"
    )


def _files(files: Mapping[str, str]) -> str:
    if not files:
        return ""
    items = "".join(f"<li>{_e(label)}: <code>{_e(name)}</code></li>" for label, name in files.items())
    return f'<section><h2>Files in results/</h2><ul class="files">{items}</ul></section>'


def _facts(summary: Mapping[str, Any]) -> str:
    facts = [
        ("Mode", summary.get("mode")),
        ("Received", summary.get("received_at")),
        ("Started", summary.get("started_at")),
        ("Finished", summary.get("finished_at")),
        ("sha256", summary.get("sha256")),
    ]
    if summary.get("duplicate_of"):
        facts.append(("Same file as job", summary.get("duplicate_of")))
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v)
    return f'<section class="facts"><h2>Details</h2><dl>{rows}</dl></section>'


_CSS = """
:root{--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--hold:#0969da;--muted:#57606a;--line:#d0d7de;
--bg:#f6f8fa;color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:#1f2328;font:15px/1.5 system-ui,-apple-system,"Segoe UI",
Roboto,"Noto Sans",Arial,sans-serif}
main{max-width:60rem;margin:0 auto;padding:1.5rem 1.25rem 3rem}
header{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1rem 1.25rem}
h1{margin:.1rem 0 .5rem;font-size:1.5rem;word-break:break-all}
h2{font-size:1.05rem;margin:1.6rem 0 .6rem}
h3{font-size:.95rem;margin:.2rem 0 .5rem;font-weight:600}
.kicker{margin:0;color:var(--muted);font-size:.85rem}
.status{display:inline-block;margin:0;padding:.15rem .6rem;border-radius:999px;font-weight:600;
color:#fff}
.status.ok{background:var(--ok)}.status.warn{background:var(--warn)}.status.bad{background:var(--bad)}
.status.hold{background:var(--hold)}.status.muted{background:var(--muted)}
.message{margin:.6rem 0 0;white-space:pre-wrap;word-break:break-word}
.held{background:#ddf4ff;border:1px solid #54aeff;border-radius:8px;padding:.2rem 1.25rem .6rem;
margin-top:1rem}
.held h2{margin-top:.8rem}
.counts{display:grid;grid-template-columns:repeat(auto-fill,minmax(7.5rem,1fr));gap:.5rem}
.count{background:#fff;border:1px solid var(--line);border-radius:8px;padding:.5rem .75rem}
.count .n{display:block;font-size:1.4rem;font-weight:600;font-variant-numeric:tabular-nums}
.count .label{color:var(--muted);font-size:.85rem}
.count.zero .n{color:#8c959f}
.count.error:not(.zero) .n{color:var(--bad)}.count.warning:not(.zero) .n{color:var(--warn)}
.count.created:not(.zero) .n,.count.reactivated:not(.zero) .n{color:var(--ok)}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px;
overflow:hidden}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
td{word-break:break-word}
th{background:#f6f8fa;font-weight:600;font-size:.85rem;color:var(--muted)}
tr:last-child td{border-bottom:0}
td code{word-break:normal;overflow-wrap:anywhere}
.use{white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{display:inline-block;width:7rem;height:.6rem;background:#eaeef2;border-radius:4px;
vertical-align:middle;overflow:hidden}
.fill{display:block;height:100%}.fill.ok{background:var(--ok)}.fill.warn{background:var(--warn)}
.fill.bad{background:var(--bad)}
.pct{margin-left:.4rem;color:var(--muted);font-size:.85rem}
.issue{margin-bottom:1rem}
.lines th:first-child{width:5rem}
.tag{display:inline-block;padding:0 .45rem;border-radius:4px;font-size:.8rem;color:#fff}
.tag.bad{background:var(--bad)}.tag.warn{background:var(--warn)}
.times{color:var(--muted);font-weight:400;font-size:.85rem}
.note{color:var(--muted);font-size:.9rem;margin:.4rem 0}
code{font:.85em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eff1f3;
padding:.05rem .3rem;border-radius:4px;word-break:break-all}
.files{padding-left:1.2rem;margin:0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0}
dt{color:var(--muted)}dd{margin:0;word-break:break-all}
@media print{body{background:#fff}.status,.tag,.fill{print-color-adjust:exact;-webkit-print-color-adjust:exact}}
"""
