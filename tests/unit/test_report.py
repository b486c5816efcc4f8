"""orgsyncd.core.report: the HTML report is self-contained, escapes everything, and says what happened."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st

from orgsyncd.core.report import HeldPlan, IssueGroup, ReportData, SeatUsage, issue_groups_from_rows, render

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "header", "p", "h1", "h2", "h3",
    "section", "div", "span", "table", "thead", "tbody", "tr", "th", "td", "code", "ul", "li",
    "dl", "dt", "dd",
}  # fmt: skip


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Collect:
    parser = _Collect()
    parser.feed(html)
    parser.close()
    return parser


def summary(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "job_id": 7,
        "tenant": "acme",
        "file": "day1.csv",
        "sha256": "ab" * 32,
        "mode": "delta",
        "status": "partially_succeeded",
        "counts": {"created": 2, "updated": 1, "unchanged": 0, "deactivated": 0, "reactivated": 0,
                   "error": 3, "warning": 1},
        "received_at": "2026-01-02T03:04:05Z",
        "started_at": "2026-01-02T03:04:06Z",
        "finished_at": "2026-01-02T03:04:07Z",
    }  # fmt: skip
    return base | extra


def test_counts_seats_and_issue_groups_are_in_the_page() -> None:
    html = render(
        ReportData(
            summary=summary(),
            seats=[
                SeatUsage(license="pro", seats=10, before=4, after=9),
                SeatUsage(license="free", seats=0, before=3, after=1),
            ],
            issues=[
                IssueGroup(code="invalid_email", outcome="error", count=7, examples=[(4, "bad 'x'"), (9, "bad 'y'")]),
                IssueGroup(code="uid_adopted", outcome="warning", count=1, examples=[(3, "adopted")]),
            ],
            files={"Results": "day1.7.results.csv"},
        )
    )  # fmt: skip
    text = " ".join(parse(html).text)
    assert "Partially succeeded" in text
    assert re.search(r"2\s*created", text) and re.search(r"3\s*errors", text)
    # seats: before, after, change and the share of the limit used; unlimited says so
    assert re.search(r"pro\s*4\s*9\s*\+5\s*10\s*90%", text)
    assert re.search(r"free\s*3\s*1\s*−2\s*unlimited", text)
    assert "invalid_email" in text and "7 line(s)" in text and "bad 'y'" in text
    assert "… and 5 more line(s)" in text  # 7 lines, 2 shown
    assert "uid_adopted" in text and "day1.7.results.csv" in text


def test_a_held_job_shows_why_and_what_it_would_do() -> None:
    held = HeldPlan(
        reason="would deactivate 5 of 20 licensed learners",
        would={"unchanged": 15, "deactivated": 5},
        plan_file="day1.7.plan.csv",
        lines=["5 deactivate"],
    )
    html = render(ReportData(summary=summary(status="held", message=held.reason), held=held))
    text = " ".join(parse(html).text)
    assert "Held: nothing was applied" in text
    assert text.count("would deactivate 5 of 20") == 1  # in the held box, not repeated in the header
    assert "15 unchanged, 5 deactivated" in text
    assert "day1.7.plan.csv" in text and "5 deactivate" in text
    assert "Planned, not applied" in text


def test_a_file_level_failure_leads_with_its_code_and_message() -> None:
    html = render(
        ReportData(summary=summary(status="failed", error={"code": "empty_file", "message": "no header"}))
    )
    text = " ".join(parse(html).text)
    assert "Failed" in text and "empty_file: no header" in text
    assert "None." in text  # no row issues listed


def test_the_page_loads_nothing_from_outside_and_runs_no_script() -> None:
    html = render(ReportData(summary=summary(), seats=[SeatUsage(license="pro", seats=1, before=0, after=1)]))
    parsed = parse(html)
    assert {tag for tag, _ in parsed.tags} <= ALLOWED_TAGS
    for _, attrs in parsed.tags:
        assert not any(name in attrs for name in ("src", "href", "onload", "onclick"))
    assert "url(" not in html and "@import" not in html and "<script" not in html
    csp = [
        a["content"]
        for t, a in parsed.tags
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'"]


hostile = st.text(alphabet=st.sampled_from("<>&\"'/=ab \u00e9\u202e"), min_size=1, max_size=30)


@given(file=hostile, tenant=hostile, message=hostile, code=hostile, license=hostile)
def test_every_value_is_escaped(file: str, tenant: str, message: str, code: str, license: str) -> None:
    """Roster cells and names reach the page only as text: no value can add a tag or attribute."""
    data = ReportData(
        summary=summary(file=file, tenant=tenant, status="failed", error={"code": code, "message": message}),
        seats=[SeatUsage(license=license, seats=2, before=1, after=2)],
        issues=[IssueGroup(code=code, outcome="error", count=1, examples=[(2, message)])],
        held=HeldPlan(reason=message, would={"created": 1}),
        files={message: file},
    )
    parsed = parse(render(data))
    assert {tag for tag, _ in parsed.tags} <= ALLOWED_TAGS
    text = "".join(parsed.text)
    for value in (file, tenant, message, code, license):
        assert value in text


def test_issue_rows_group_by_code_in_order() -> None:
    rows = [("a", "error", 3, 2, "m2"), ("a", "error", 3, 5, "m5"), ("b", "warning", 1, 4, None)]
    groups = issue_groups_from_rows(rows)
    assert [(g.code, g.count, list(g.examples)) for g in groups] == [
        ("a", 3, [(2, "m2"), (5, "m5")]),
        ("b", 1, [(4, "")]),
    ]
