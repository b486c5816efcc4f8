"""What the HTML report needs from the database: seats in use, and row issues grouped by code.

Both read inside the job's own transaction, so "before" and "after" are the states just before
and just after its apply. They are grouped scans (the learner licence index; the plan table,
which holds only the rows that are not unchanged), never a pass per row in Python.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from orgsyncd.core.report import EXAMPLES_PER_CODE, IssueGroup, issue_groups_from_rows


def seats_in_use(conn: Connection, tenant_id: int) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT license_type, COUNT(*) FROM learner WHERE tenant_id = :t "
            "AND license_type IS NOT NULL GROUP BY license_type"
        ),
        {"t": tenant_id},
    )
    return {str(lic): int(n) for lic, n in rows}


def plan_issues(conn: Connection, per_code: int = EXAMPLES_PER_CODE) -> list[IssueGroup]:
    """Row errors and warnings of the plan table ``pl``, by code, commonest first, with the first
    ``per_code`` lines of each."""
    rows = conn.execute(
        text(
            "SELECT code, outcome, n, line, msg FROM ("
            " SELECT COALESCE(err, note) AS code,"
            "  CASE WHEN err IS NOT NULL THEN 'error' ELSE 'warning' END AS outcome,"
            "  COALESCE(msg, note_msg) AS msg, line,"
            "  COUNT(*) OVER (PARTITION BY COALESCE(err, note)) AS n,"
            "  ROW_NUMBER() OVER (PARTITION BY COALESCE(err, note) ORDER BY line) AS rn"
            " FROM pl WHERE err IS NOT NULL OR note IS NOT NULL) x "
            "WHERE rn <= :k ORDER BY outcome, n DESC, code, line"
        ),
        {"k": per_code},
    )
    return issue_groups_from_rows((str(c), str(o), int(n), int(line), m) for c, o, n, line, m in rows)
