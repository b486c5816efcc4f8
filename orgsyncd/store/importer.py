"""Stage -> plan -> apply, set-based.

Validated rows are bulk-loaded into a per-job temporary table ``stg`` (COPY on PostgreSQL, one
executemany on SQLite); every later step is a handful of SQL statements over the whole table, so
the cost per row is a few index probes inside the database and nothing in Python. Planning and
applying run in one transaction: the caller commits it or rolls it back as a whole.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, text

from orgsyncd.config import TenantConfig
from orgsyncd.core.guards import Hold, decide_hint
from orgsyncd.core.rows import STAGE_FIXED, Rejected, StagedRow

BATCH = 20_000
_TEXT_FIELDS = (("first", "first_name"), ("last", "last_name"), ("title", "title"))
_APPLIED = "('updated', 'deactivated', 'reactivated')"
_CHANGING = "('created', 'updated', 'deactivated', 'reactivated')"
_JSON_PAIRS = 40  # key/value pairs per json_object call: 80 arguments, under both databases' caps
_SAME_LEARNER = "'the same learner is already on line ' || d.first_line || '; the first occurrence wins'"


@dataclass(frozen=True, slots=True)
class PlanRequest:
    tenant_id: int
    tenant: TenantConfig
    job_id: int
    mode: str  # "delta" | "full"
    approved: bool
    groups: Sequence[str]  # group names in header order (column g0, g1, ...)
    has_uid: bool
    now: datetime
    rows: int  # staged rows
    # groups_from columns (key of each; staged as group name s0.., name key k0..): a learner is in
    # one group per such column, remembered as membership.source, and moves when the value does
    sources: Sequence[str] = ()


@dataclass(slots=True)
class Plan:
    counts: dict[str, int] = field(default_factory=dict)
    absent: int = 0  # learners deactivated because a full file left them out
    grace: int = 0  # left out, but not yet for deactivate_after_missing_runs files in a row
    licensed: int = 0  # counted only when an import deactivates anyone
    deactivations: int = 0
    holds: list[Hold] = field(default_factory=list)  # the planner's guard (threshold) fired
    default_outcome: str = "unchanged"  # what a line missing from result_lines means


class Sql:
    """The few places PostgreSQL and SQLite spell things differently."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"

    def instr(self, haystack: str, needle: str) -> str:
        return f"strpos({haystack}, {needle})" if self.pg else f"instr({haystack}, {needle})"

    def json_object(self, pairs: Sequence[tuple[str, str]]) -> str:
        """A JSON object as text. Keys are quoted as SQL literals (group names come from the file's
        header); past _JSON_PAIRS pairs the objects are joined as text, because both databases cap a
        function's arguments (PostgreSQL at 100) and a header may have hundreds of groups."""
        if self.pg:
            return _json_text(pairs)
        parts = [self._json_chunk(pairs[at : at + _JSON_PAIRS]) for at in range(0, len(pairs), _JSON_PAIRS)]
        if len(parts) == 1:
            return parts[0]
        head, *middle, last = parts  # '{a, b}' '{c}' '{d}' -> '{a, b' ', ' 'c' ', ' 'd}'
        pieces = [f"substr({head}, 1, length({head}) - 1)"]
        pieces += [f"substr({part}, 2, length({part}) - 2)" for part in middle]
        pieces.append(f"substr({last}, 2)")
        return "(" + " || ', ' || ".join(pieces) + ")"

    def _json_chunk(self, pairs: Sequence[tuple[str, str]]) -> str:
        args = ", ".join(f"{sql_literal(key)}, {expr}" for key, expr in pairs)
        return f"json_object({args})"

    @property
    def line_key(self) -> str:
        """The ``line`` column of a per-job temporary table filled by one big INSERT. On PostgreSQL
        the unique index comes after that insert (``index_lines``): maintaining it row by row cost
        more than the insert itself, building it from the finished table a fraction. SQLite's
        INTEGER PRIMARY KEY is the rowid and costs nothing."""
        return "line INTEGER NOT NULL" if self.pg else "line INTEGER PRIMARY KEY"

    def index_lines(self, table: str) -> None:
        if self.pg:
            self.run(f"CREATE UNIQUE INDEX {table}_line ON {table} (line)")

    @property
    def in_line_order(self) -> str:
        """Insert in line order, so new ids and the tables' physical order follow the file. On
        SQLite the plan's rowid is the line, so this costs nothing; on PostgreSQL the plan is
        already written in line order and the sort would spill a million wide rows to disk."""
        return "" if self.pg else " ORDER BY line"

    def time(self, value: datetime) -> Any:
        # SQLite keeps SQLAlchemy's text format for DateTime columns; PostgreSQL takes the object.
        if self.pg:
            return value
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def run(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.conn.execute(text(sql), params or {})

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.conn.execute(text(sql), params or {}).scalar()


def sql_literal(value: str) -> str:
    """A string as an SQL literal: quotes doubled (standard strings on both databases, where a
    backslash is an ordinary character)."""
    return "'" + value.replace("'", "''") + "'"


def _json_text(pairs: Sequence[tuple[str, str]]) -> str:
    """PostgreSQL: the text json_build_object(...)::text gives (``{"k" : v, ...}``), spelled as a
    concatenation of to_json() of each value: json_build_object works out each argument's type
    again for every row, which made it half the cost of a first import's audit trail. Keys and
    literal values are encoded here, as PostgreSQL would (no argument cap either)."""
    if not pairs:
        return "'{}'"
    parts = []
    for n, (key, expr) in enumerate(pairs):
        parts.append(sql_literal(("{" if n == 0 else ", ") + _json_string(key) + " : "))
        parts.append(_json_value(expr))
    parts.append("'}'")
    return "(" + " || ".join(parts) + ")"


def _json_string(value: str) -> str:
    # the escapes of PostgreSQL's escape_json: quote, backslash, \b \f \n \r \t, other controls
    # as \u00xx; anything else as it is
    return json.dumps(value, ensure_ascii=False)


def _json_value(expr: str) -> str:
    if expr.upper() == "NULL":
        return "'null'"
    inner = expr[1:-1]
    if len(expr) >= 2 and expr[0] == expr[-1] == "'" and "'" not in inner.replace("''", ""):
        return sql_literal(_json_string(inner.replace("''", "'")))  # a string literal
    return f"COALESCE(to_json({expr})::text, 'null')"


def staging_columns(group_count: int, source_count: int = 0) -> list[str]:
    sources = [*(f"s{k}" for k in range(source_count)), *(f"k{k}" for k in range(source_count))]
    return [*STAGE_FIXED, *(f"g{i}" for i in range(group_count)), *sources]


def ukey(table: str) -> str:
    """A row's identity within the file: its uid, else its email (a rejected row has one of them
    or neither). Two rows with the same key are the same learner."""
    return f"COALESCE('u:' || {table}.uid, 'e:' || {table}.email)"


def create_staging(conn: Connection, group_count: int, source_count: int = 0) -> None:
    sql = Sql(conn)
    sql.run("DROP TABLE IF EXISTS stg")
    groups = "".join(f", g{i} INTEGER" for i in range(group_count))
    groups += "".join(f", s{k} TEXT" for k in range(source_count))
    groups += "".join(f", k{k} TEXT" for k in range(source_count))
    sql.run(
        "CREATE TEMPORARY TABLE stg (line INTEGER PRIMARY KEY, err TEXT, msg TEXT, "
        "uid TEXT, email TEXT, first TEXT, last TEXT, title TEXT, lic_on TEXT, lic_off TEXT, "
        f"fp BIGINT{groups})"
    )


def load_staging(
    conn: Connection, rows: Iterable[StagedRow | Rejected], group_count: int, source_count: int = 0
) -> int:
    """Bulk-load validated rows; returns how many."""
    columns = staging_columns(group_count, source_count)
    if conn.dialect.name == "postgresql":
        return _copy_pg(conn, rows, columns)
    valid = f"INSERT INTO stg ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    fields = Rejected._fields
    rejected = f"INSERT INTO stg ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})"
    total = 0
    iterator = iter(rows)
    while batch := list(islice(iterator, BATCH)):
        total += len(batch)
        errors = [row for row in batch if type(row) is Rejected]
        if errors:
            conn.exec_driver_sql(rejected, errors)
            batch = [row for row in batch if type(row) is not Rejected]
        if batch:
            conn.exec_driver_sql(valid, batch)
    return total


def _copy_pg(conn: Connection, rows: Iterable[StagedRow | Rejected], columns: list[str]) -> int:
    raw = conn.connection.driver_connection
    total = 0
    no_error = (None, None)
    blanks = (None,) * (len(columns) - 3)  # STAGE_FIXED starts with line, uid, email
    copy_sql = f"COPY stg ({', '.join(columns)}, err, msg) FROM STDIN"
    with raw.cursor() as cur, cur.copy(copy_sql) as copy:  # type: ignore[union-attr]
        for row in rows:
            if type(row) is Rejected:
                copy.write_row((row.line, row.uid, row.email, *blanks, row.err, row.msg))
            else:
                copy.write_row(row + no_error)
            total += 1
    return total


def drop_staging(conn: Connection) -> None:
    """PostgreSQL keeps pooled sessions, so drop the temporary tables; on SQLite they vanish with
    the connection (closed after every job), which is much cheaper than dropping a big table."""
    if conn.dialect.name == "postgresql":
        for table in ("stg", "pl", "absent", "grace", "chg", "mm", "dk"):
            Sql(conn).run(f"DROP TABLE IF EXISTS {table}")


class Planner:
    """Turns the staged rows into a plan table ``pl``: outcomes, row errors and new values.

    One INSERT ... SELECT does nearly all the work (match by uid/email, current state, licence
    intents, field and group changes, outcome) with a few index probes per row; the rarer row
    errors that need the whole file (duplicates, in-file email clashes, seats) are targeted
    updates afterwards. Learner data is not touched.

    On a re-import, a row whose fingerprint matches its learner stays out of ``pl`` (it is only in
    the match table ``mm``): it is unchanged, and a nightly file is nearly all such rows. A staged
    line missing from ``pl`` therefore means ``unchanged``; one that turns out to be a duplicate is
    copied into ``pl`` to carry its error.
    """

    def __init__(self, conn: Connection, req: PlanRequest) -> None:
        self.sql = Sql(conn)
        self.req = req
        self.p: dict[str, Any] = {"t": req.tenant_id}
        self.slim = False  # True once unchanged rows are left out of pl

    def plan(self) -> Plan:
        if self.sql.pg:
            self.sql.run("ANALYZE stg")
        self._build()
        self._duplicates()
        if self.req.has_uid:
            self._email_clashes_in_file()
            self._same_learner_twice()
        absent_licensed = self._absent() if self.req.mode == "full" else {}
        self._seats(absent_licensed)
        return self._summarise(sum(absent_licensed.values()))

    # -- the one big pass -------------------------------------------------------------------

    def _build(self) -> None:
        groups = range(len(self.req.groups))
        gcols = "".join(f", g{i} INTEGER, d{i} INTEGER" for i in groups)
        gcols += "".join(f", s{k} TEXT, k{k} TEXT, o{k} BIGINT, j{k} INTEGER" for k in self._sources)
        self.sql.run("DROP TABLE IF EXISTS pl")
        self.sql.run(
            f"CREATE TEMPORARY TABLE pl ({self.sql.line_key}, err TEXT, msg TEXT, "
            f"uid TEXT, email TEXT, lic_on TEXT, fp BIGINT{gcols}, lid BIGINT, is_new INTEGER, adopt INTEGER, "
            "echg INTEGER, cur_lic TEXT, cur_status TEXT, rel INTEGER, act INTEGER, chg INTEGER, "
            "n_email TEXT, n_uid TEXT, n_first TEXT, n_last TEXT, n_title TEXT, n_status TEXT, "
            "n_lic TEXT, outcome TEXT, note TEXT, note_msg TEXT)"
        )
        params = {**self.p, "base": self._id_base(), **self._source_params()}
        if not self._tenant_has_learners():  # a first import: every row is a new learner
            nobody = "SELECT s.*, CAST(NULL AS BIGINT) AS lid, 0 AS adopt, 0 AS taken, 0 AS same FROM stg s"
            self.sql.run(self._build_sql(nobody), params)
            self.sql.index_lines("pl")
            return
        # Re-imports: match first into a slim table; rows whose fingerprint matches go to the plan
        # as `unchanged` with no further work, and only the rest pay for the full expression pass.
        self.sql.run("DROP TABLE IF EXISTS mm")
        self.sql.run(
            f"CREATE TEMPORARY TABLE mm ({self.sql.line_key}, lid BIGINT, adopt INTEGER, "
            "taken INTEGER, same INTEGER)"
        )
        self._match_into_mm(params)
        if self.sql.pg:
            self.sql.run("ANALYZE mm")
        joined = "SELECT s.*, mm.lid, mm.adopt, mm.taken, mm.same FROM mm JOIN stg s ON s.line = mm.line WHERE mm.same = 0"
        self.sql.run(self._build_sql(joined), params)
        self.sql.index_lines("pl")
        self.slim = True

    def _match_into_mm(self, params: dict[str, Any]) -> None:
        if not self.req.has_uid:
            self.sql.run(f"INSERT INTO mm {self._match_sql(columns='s.line')}", params)
            self.sql.index_lines("mm")
            return
        # Most rows are settled by their uid's learner alone (same email): probe emails only for
        # the rest, since SQLite would otherwise look every email up.
        self.sql.run(
            "INSERT INTO mm SELECT s.line, lu.id, 0, 0, CASE WHEN lu.fp = s.fp THEN 1 ELSE 0 END "
            "FROM stg s LEFT JOIN learner lu ON lu.tenant_id = :t AND lu.uid = s.uid "
            "WHERE lu.id IS NOT NULL AND lu.email = s.email",
            params,
        )
        self.sql.index_lines("mm")  # the rest are few, and their NOT EXISTS probes use it
        unsettled = "(SELECT * FROM stg WHERE NOT EXISTS (SELECT 1 FROM mm WHERE mm.line = stg.line)) s "
        rest = self._match_sql(columns="s.line").replace("FROM stg s ", f"FROM {unsettled}", 1)
        self.sql.run(f"INSERT INTO mm {rest}", params)

    def _tenant_has_learners(self) -> bool:
        found = self.sql.scalar("SELECT 1 FROM learner WHERE tenant_id = :t LIMIT 1", self.p)
        return found is not None

    def _promote_unchanged(self, key: str) -> None:
        """Copy into ``pl`` the unchanged rows whose ``key`` is in ``dk``, so they can carry an error."""
        groups = range(len(self.req.groups))
        gcols = "".join(f", g{i}, d{i}" for i in groups) + "".join(
            f", s{k}, k{k}, j{k}" for k in self._sources
        )
        gvals = "".join(f", s.g{i}, 0" for i in groups) + "".join(
            f", s.s{k}, s.k{k}, 0" for k in self._sources
        )
        self.sql.run(
            f"INSERT INTO pl (line, uid, email, lic_on, fp{gcols}, lid, is_new, adopt, echg, rel, "
            "act, chg, outcome) "
            f"SELECT s.line, s.uid, s.email, s.lic_on, s.fp{gvals}, mm.lid, 0, 0, 0, 0, 0, 0, "
            f"'unchanged' FROM mm JOIN stg s ON s.line = mm.line WHERE mm.same = 1 AND {key} IN "
            "(SELECT k FROM dk) AND NOT EXISTS (SELECT 1 FROM pl WHERE pl.line = s.line)"
        )

    def _id_base(self) -> int:
        if self.sql.pg:
            return 0
        return int(self.sql.scalar("SELECT COALESCE(MAX(id), 0) FROM learner"))

    def _learner_sequence(self) -> str:
        """The id sequence as a regclass literal, which PostgreSQL resolves once when it parses the
        statement (``pg_get_serial_sequence`` in the statement is a catalog lookup per row)."""
        name = str(self.sql.scalar("SELECT pg_get_serial_sequence('learner', 'id')"))
        return "'" + name.replace("'", "''") + "'::regclass"

    def _build_sql(self, matched: str) -> str:
        groups = range(len(self.req.groups))
        gids = self._existing_group_ids()
        x_groups = "".join(f", m.g{i}, {_group_delta(i, gids[i])} AS d{i}" for i in groups)
        any_group = "".join(f" OR x.d{i} <> 0" for i in groups)
        x_groups += "".join(_source_exprs(k, len(self._sources)) for k in self._sources)
        any_group += "".join(f" OR x.o{k} IS NOT NULL OR x.j{k} = 1" for k in self._sources)
        pl_sources = "".join(f", s{k}, k{k}, o{k}, j{k}" for k in self._sources)
        x_sources = "".join(f", x.s{k}, x.k{k}, x.o{k}, x.j{k}" for k in self._sources)
        new_id = f"nextval({self._learner_sequence()})" if self.sql.pg else ":base + m.line"
        needle = "'|' || l.license_type || '|'"
        off = f"({self.sql.instr('m.lic_off', needle)} > 0)"
        ok = "(m.err IS NULL AND m.taken = 0)"
        live = f"({ok} AND m.same = 0)"
        values = ", ".join(f"{_new_value(col, db_col)} AS n_{col}" for col, db_col in _TEXT_FIELDS)
        return f"""
WITH m AS ({matched}),
x AS (
  SELECT m.line, m.uid, m.email, m.lic_on, m.fp, m.same,
    CASE WHEN m.err IS NOT NULL THEN m.err WHEN m.taken = 1 THEN 'email_taken' END AS err,
    CASE WHEN m.err IS NOT NULL THEN m.msg WHEN m.taken = 1
      THEN 'email ' || m.email || ' already belongs to another learner' END AS msg,
    CASE WHEN m.lid IS NULL AND {ok} THEN {new_id} ELSE m.lid END AS lid,
    CASE WHEN m.lid IS NULL THEN 1 ELSE 0 END AS is_new, m.adopt,
    CASE WHEN {live} AND (l.id IS NULL OR l.email <> m.email) THEN 1 ELSE 0 END AS echg,
    l.license_type AS cur_lic, l.status AS cur_status,
    CASE WHEN {live} AND l.license_type IS NOT NULL AND ({off} OR
      (m.lic_on IS NOT NULL AND m.lic_on <> l.license_type)) THEN 1 ELSE 0 END AS rel,
    CASE WHEN {live} AND m.lic_on IS NOT NULL AND
      (l.license_type IS NULL OR m.lic_on <> l.license_type) THEN 1 ELSE 0 END AS act,
    CASE WHEN m.same = 0 AND l.id IS NOT NULL AND ({_field_changes()}) THEN 1 ELSE 0 END AS chg,
    m.email AS n_email, COALESCE(m.uid, l.uid) AS n_uid, {values}{x_groups}
  FROM m LEFT JOIN learner l ON l.id = m.lid AND m.same = 0
)
INSERT INTO pl (line, err, msg, uid, email, lic_on, fp{"".join(f", g{i}, d{i}" for i in groups)}{pl_sources},
  lid, is_new, adopt, echg, cur_lic, cur_status, rel, act, chg, n_email, n_uid, n_first, n_last,
  n_title, n_status, n_lic, outcome, note, note_msg)
SELECT x.line, x.err, x.msg, x.uid, x.email, x.lic_on, x.fp
  {"".join(f", x.g{i}, x.d{i}" for i in groups)}{x_sources},
  x.lid, x.is_new, x.adopt, x.echg, x.cur_lic, x.cur_status, x.rel, x.act, x.chg,
  x.n_email, x.n_uid, x.n_first, x.n_last, x.n_title,
  CASE WHEN x.act = 1 THEN 'invited' WHEN x.rel = 1 THEN 'deactivated'
    WHEN x.is_new = 1 THEN 'unassigned' ELSE x.cur_status END,
  CASE WHEN x.act = 1 THEN x.lic_on WHEN x.rel = 1 THEN NULL ELSE x.cur_lic END,
  CASE WHEN x.err IS NOT NULL THEN 'error' WHEN x.same = 1 THEN 'unchanged'
    WHEN x.is_new = 1 THEN 'created'
    WHEN x.act = 1 AND x.cur_status = 'deactivated' THEN 'reactivated'
    WHEN x.rel = 1 AND x.act = 0 THEN 'deactivated'
    WHEN x.act = 1 OR x.rel = 1 OR x.adopt = 1 OR x.chg = 1{any_group} THEN 'updated'
    ELSE 'unchanged' END,
  CASE WHEN x.err IS NULL AND x.adopt = 1 THEN 'uid_adopted' END,
  CASE WHEN x.err IS NULL AND x.adopt = 1
    THEN 'the learner with this email had no unique_user_id and now has this one' END
FROM x"""

    def _match_sql(self, columns: str = "s.*") -> str:
        """Which learner each row means. With a uid: that uid's learner; else the email's learner
        if it has no uid (adoption); an email held by someone else is email_taken. A learner whose
        fingerprint equals the row's is unchanged (``same``) and costs no further probes."""
        if not self.req.has_uid:
            return (
                f"SELECT {columns}, le.id AS lid, 0 AS adopt, 0 AS taken, "
                "CASE WHEN le.fp = s.fp THEN 1 ELSE 0 END AS same FROM stg s "
                "LEFT JOIN learner le ON le.tenant_id = :t AND le.email = s.email"
            )
        return (
            f"SELECT {columns}, CASE WHEN lu.id IS NOT NULL THEN lu.id "
            "WHEN s.uid IS NULL OR le.uid IS NULL THEN le.id END AS lid, "
            "CASE WHEN lu.id IS NULL AND s.uid IS NOT NULL AND le.id IS NOT NULL "
            "AND le.uid IS NULL THEN 1 ELSE 0 END AS adopt, "
            "CASE WHEN s.uid IS NOT NULL AND le.id IS NOT NULL AND ((lu.id IS NULL AND "
            "le.uid IS NOT NULL) OR (lu.id IS NOT NULL AND le.id <> lu.id)) THEN 1 ELSE 0 END "
            "AS taken, CASE WHEN lu.id IS NOT NULL THEN (CASE WHEN lu.fp = s.fp THEN 1 ELSE 0 END) "
            "WHEN le.fp = s.fp AND (s.uid IS NULL OR le.uid IS NULL) THEN 1 ELSE 0 END AS same "
            "FROM stg s LEFT JOIN learner lu ON lu.tenant_id = :t AND lu.uid = s.uid "
            # The email lookup is only needed when the uid's learner has another email (or none).
            "LEFT JOIN learner le ON le.tenant_id = :t AND le.email = s.email "
            "AND (lu.id IS NULL OR lu.email <> s.email)"
        )

    @property
    def _sources(self) -> range:
        return range(len(self.req.sources))

    def _source_params(self) -> dict[str, str]:
        return {f"src{k}": key for k, key in enumerate(self.req.sources)}

    def _existing_group_ids(self) -> list[int | None]:
        ids = dict(self.sql.run("SELECT name_key, id FROM learner_group WHERE tenant_id = :t", self.p).all())
        return [ids.get(name.casefold()) for name in self.req.groups]

    # -- row errors that need the whole file --------------------------------------------------

    def _mark(self, code: str, message_sql: str, groups_sql: str, key: str, promote: str | None) -> None:
        """Mark every row after the first of each group ``(k, first_line)`` of ``groups_sql``.

        ``key`` is the group key of a ``pl`` row; ``promote`` the same of an unchanged row (over
        ``mm`` and ``stg s``), or None when unchanged rows cannot be in such a group."""
        self.sql.run("DROP TABLE IF EXISTS dk")
        self.sql.run(f"CREATE TEMPORARY TABLE dk AS {groups_sql}")
        if self.sql.scalar("SELECT 1 FROM dk LIMIT 1") is None:
            return
        if self.slim and promote is not None:
            self._promote_unchanged(promote)
        self.sql.run(
            f"UPDATE pl SET err = '{code}', outcome = 'error', note = NULL, note_msg = NULL, "
            f"msg = {message_sql} FROM dk d "
            f"WHERE {key} = d.k AND pl.line > d.first_line AND pl.err IS NULL"
        )

    def _duplicates(self) -> None:
        self._mark(
            "duplicate_in_file",
            _SAME_LEARNER,
            # Grouping by the plain columns lets SQLite sort stored values, not a million new strings.
            "SELECT 'u:' || uid AS k, MIN(line) AS first_line FROM stg WHERE uid IS NOT NULL "
            "GROUP BY uid HAVING COUNT(*) > 1 UNION ALL "
            "SELECT 'e:' || email, MIN(line) FROM stg WHERE uid IS NULL AND email IS NOT NULL "
            "GROUP BY email HAVING COUNT(*) > 1",
            ukey("pl"),
            promote=ukey("s"),
        )

    def _email_clashes_in_file(self) -> None:
        # Only rows that bring an email a learner doesn't have yet can clash with each other
        # (so never an unchanged row).
        self._mark(
            "email_taken",
            "'email ' || pl.email || ' is already used on line ' || d.first_line || ' by another learner'",
            "SELECT email AS k, MIN(line) AS first_line FROM pl WHERE err IS NULL AND echg = 1 "
            "GROUP BY email HAVING COUNT(*) > 1",
            "pl.email",
            promote=None,
        )

    def _same_learner_twice(self) -> None:
        # A row without uid can reach, by email, the learner another row reached by uid.
        if not self.slim:  # the tenant had no learners: every row makes a new one
            return
        # mm has every row's learner (lid NULL: a new one)
        groups = (
            "SELECT lid AS k, MIN(line) AS first_line FROM mm WHERE lid IN (SELECT mm.lid FROM mm "
            "JOIN stg s ON s.line = mm.line WHERE s.uid IS NULL AND mm.lid IS NOT NULL) "
            "GROUP BY lid HAVING COUNT(*) > 1"
        )
        self._mark(
            "duplicate_in_file",
            _SAME_LEARNER,
            groups,
            "pl.lid",
            promote="mm.lid",
        )

    def _absent(self) -> dict[str, int]:
        """Full mode: learners the file leaves out (rows with errors still count as present)."""
        table, matched = ("mm", "p.lid IS NOT NULL") if self.slim else ("pl", "p.is_new = 0")
        if self.sql.pg:  # NOT IN over a big subquery is a per-learner subplan there; this hashes
            left_out = f"NOT EXISTS (SELECT 1 FROM {table} p WHERE p.lid = learner.id AND {matched})"
        else:  # SQLite indexes a NOT IN list once; a correlated NOT EXISTS would scan per learner
            left_out = f"id NOT IN (SELECT p.lid FROM {table} p WHERE {matched} AND p.lid IS NOT NULL)"
        self.sql.run("DROP TABLE IF EXISTS absent")
        self.sql.run(
            "CREATE TEMPORARY TABLE absent AS SELECT id AS lid, license_type AS cur_lic, "
            f"status AS cur_status, missing_runs AS miss FROM learner WHERE tenant_id = :t "
            f"AND status <> 'deactivated' AND {left_out}",
            self.p,
        )
        self._grace()
        rows = self.sql.run("SELECT cur_lic, COUNT(*) FROM absent WHERE cur_lic IS NOT NULL GROUP BY cur_lic")
        return {str(lic): int(n) for lic, n in rows}

    def _grace(self) -> None:
        """deactivate_after_missing_runs = N: a learner left out of fewer than N files in a row
        moves from ``absent`` to ``grace`` (its counter goes up instead)."""
        runs = self.req.tenant.deactivate_after_missing_runs
        self.sql.run("DROP TABLE IF EXISTS grace")
        self.sql.run("CREATE TEMPORARY TABLE grace (lid BIGINT PRIMARY KEY, miss INTEGER)")
        if runs <= 1:
            return
        params = {"n": runs}
        self.sql.run("INSERT INTO grace SELECT lid, miss FROM absent WHERE miss + 1 < :n", params)
        self.sql.run("DELETE FROM absent WHERE miss + 1 < :n", params)

    def _seats(self, absent_licensed: dict[str, int]) -> None:
        limited = {lic: seats for lic, seats in self.req.tenant.licenses.items() if seats > 0}
        if not limited:
            return
        wanted = self._counts("SELECT lic_on, COUNT(*) FROM pl WHERE err IS NULL AND act = 1 GROUP BY lic_on")
        in_use = self._counts(
            "SELECT license_type, COUNT(*) FROM learner WHERE tenant_id = :t "
            "AND license_type IS NOT NULL GROUP BY license_type"
        )
        # Seats freed by this file (pure releases) are reusable by it; a reassignment's old seat
        # is not counted, since that row may still fail and keep it.
        freed = self._counts(
            "SELECT cur_lic, COUNT(*) FROM pl WHERE err IS NULL AND rel = 1 AND act = 0 GROUP BY cur_lic"
        )
        for lic, seats in limited.items():
            free = seats - in_use.get(lic, 0) + freed.get(lic, 0) + absent_licensed.get(lic, 0)
            if wanted.get(lic, 0) > max(free, 0):
                self._refuse_seats(lic, seats, max(free, 0))

    def _counts(self, sql: str) -> dict[str, int]:
        return {key: n for key, n in self.sql.run(sql, self.p) if key is not None}

    def _refuse_seats(self, lic: str, seats: int, free: int) -> None:
        self.sql.run(
            "UPDATE pl SET err = 'no_seats', outcome = 'error', note = NULL, note_msg = NULL, "
            "msg = :msg FROM (SELECT line AS l2, ROW_NUMBER() OVER (ORDER BY line) AS rn FROM pl "
            "WHERE err IS NULL AND act = 1 AND lic_on = :lic) r WHERE pl.line = r.l2 AND r.rn > :free",
            {
                "lic": lic,
                "free": free,
                "msg": f"{seats} of {seats} seats of {lic} in use; free a seat or add seats",
            },
        )

    # -- summary and safety threshold ---------------------------------------------------------

    def _summarise(self, absent_licensed: int) -> Plan:
        plan = Plan()
        plan.counts = dict(self.sql.run("SELECT outcome, COUNT(*) FROM pl GROUP BY outcome").all())
        if self.slim:
            left_out = self.req.rows - sum(plan.counts.values())
            plan.counts["unchanged"] = plan.counts.get("unchanged", 0) + left_out
        elif plan.counts:  # every line is in pl: leave the commonest outcome implicit
            plan.default_outcome = max(plan.counts, key=lambda outcome: plan.counts[outcome])
        if self.req.mode == "full":
            plan.absent = int(self.sql.scalar("SELECT COUNT(*) FROM absent"))
            plan.grace = int(self.sql.scalar("SELECT COUNT(*) FROM grace"))
        plan.deactivations = plan.counts.get("deactivated", 0) + absent_licensed
        hold = self._threshold(plan)
        plan.holds = [hold] if hold else []
        return plan

    def _threshold(self, plan: Plan) -> Hold | None:
        """In both modes: a delta file that sets `inactive` for most of the tenant is as
        dangerous as a full file that leaves them out."""
        cfg = self.req.tenant
        if self.req.approved or plan.deactivations == 0:
            return None
        # Counted only here: a scan of the tenant's licences, which most jobs never need.
        plan.licensed = int(
            self.sql.scalar(
                "SELECT COUNT(*) FROM learner WHERE tenant_id = :t AND license_type IS NOT NULL",
                self.p,
            )
        )
        over_ratio = plan.deactivations > cfg.max_deactivation_ratio * plan.licensed
        over_count = cfg.max_deactivations is not None and plan.deactivations > cfg.max_deactivations
        if not (over_ratio or over_count):
            return None
        limit = (
            f"max_deactivations = {cfg.max_deactivations}"
            if over_count
            else f"max_deactivation_ratio = {cfg.max_deactivation_ratio:g}"
        )
        return Hold(
            "threshold_exceeded",
            f"this {self.req.mode} import would deactivate {plan.deactivations} of {plan.licensed} "
            f"licensed learners, more than {limit} allows; " + decide_hint(self.req.job_id),
        )


def _group_delta(i: int, gid: int | None) -> str:
    """+1 join, -1 leave, 0 no change, for group column i of a valid row."""
    joins = f"CASE WHEN m.g{i} = 1 THEN 1 ELSE 0 END"
    if gid is None:  # the group does not exist yet: nobody is a member
        return f"CASE WHEN m.err IS NOT NULL OR m.taken = 1 OR m.g{i} IS NULL THEN 0 ELSE {joins} END"
    member = f"EXISTS (SELECT 1 FROM membership mm WHERE mm.group_id = {int(gid)} AND mm.learner_id = m.lid)"
    return (
        f"CASE WHEN m.err IS NOT NULL OR m.taken = 1 OR m.same = 1 OR m.g{i} IS NULL THEN 0 "
        f"WHEN m.lid IS NULL THEN {joins} "
        f"WHEN {member} THEN (CASE WHEN m.g{i} = 0 THEN -1 ELSE 0 END) ELSE {joins} END"
    )


def _source_exprs(k: int, count: int) -> str:
    """For groups_from column k of a row that applies: o{k}, the group this column gave the
    learner that they now leave (unless another such column of the row names it), and j{k}, 1 if
    they join the group the cell names (it may not exist yet)."""
    live = "m.err IS NULL AND m.taken = 0 AND m.same = 0"
    named = ", ".join(f"COALESCE(m.k{j}, '')" for j in range(count))
    leave = (
        f"CASE WHEN {live} AND m.lid IS NOT NULL THEN (SELECT ms.group_id FROM membership ms "
        "JOIN learner_group g ON g.id = ms.group_id "
        f"WHERE ms.learner_id = m.lid AND ms.source = :src{k} AND g.name_key NOT IN ({named})) END"
    )
    member = (
        "EXISTS (SELECT 1 FROM membership ms JOIN learner_group g ON g.id = ms.group_id "
        f"WHERE ms.learner_id = m.lid AND g.tenant_id = :t AND g.name_key = m.k{k})"
    )
    join = f"CASE WHEN {live} AND m.k{k} IS NOT NULL AND (m.lid IS NULL OR NOT {member}) THEN 1 ELSE 0 END"
    return f", m.s{k}, m.k{k}, {leave} AS o{k}, {join} AS j{k}"


def _new_value(col: str, db_col: str) -> str:
    return f"CASE WHEN m.{col} IS NULL THEN l.{db_col} WHEN m.{col} = '' THEN NULL ELSE m.{col} END"


def _field_changes() -> str:
    checks = [f"({_new_value(col, db_col)}) IS DISTINCT FROM l.{db_col}" for col, db_col in _TEXT_FIELDS]
    checks += ["m.email IS DISTINCT FROM l.email", "COALESCE(m.uid, l.uid) IS DISTINCT FROM l.uid"]
    return " OR ".join(checks)


class Applier:
    """Writes a plan: audit first (it needs the before state), then licences, learners, groups."""

    def __init__(self, conn: Connection, req: PlanRequest) -> None:
        self.sql = Sql(conn)
        self.req = req
        now = self.sql.time(req.now)
        self.p: dict[str, Any] = {"t": req.tenant_id, "job": req.job_id, "now": now}

    def apply(self, counts: dict[str, int]) -> None:
        self.src = self._source(counts)
        # Statements about rows of a kind the plan has none of are skipped: on a first import
        # nothing is updated, and each of them would still scan the whole plan.
        self.touches_existing = any(counts.get(o, 0) for o in ("updated", "deactivated", "reactivated"))
        self.creates = counts.get("created", 0) > 0
        full = self.req.mode == "full"
        group_ids = self._ensure_groups()
        inactive = self._inactive_group_id()
        self._audit(full, group_ids, inactive)
        self._release_licences(full)
        self._update_learners(full)
        if full:
            self._count_missing()
        self._insert_learners()
        self._grant_licences()
        self._apply_groups(group_ids, inactive)
        self._apply_sources(inactive)
        if counts.get("unchanged", 0):
            self._refresh_fingerprints()
        if inactive is not None:
            self._move_to_inactive(inactive, full)

    def _source(self, counts: dict[str, int]) -> str:
        """The rows to write. A nightly re-import changes a few rows of many: copying those into
        a small table once beats a dozen scans of the whole plan."""
        changing = sum(counts.get(o, 0) for o in ("created", "updated", "deactivated", "reactivated"))
        if changing * 4 > sum(counts.values()):
            return "pl"
        self.sql.run("DROP TABLE IF EXISTS chg")
        self.sql.run(f"CREATE TEMPORARY TABLE chg AS SELECT * FROM pl WHERE outcome IN {_CHANGING}")
        return "chg"

    def _ensure_groups(self) -> list[int]:
        return [self._group_id(name) for name in self.req.groups]

    def _inactive_group_id(self) -> int | None:
        name = self.req.tenant.inactive_group
        return self._group_id(name) if name else None

    def _group_id(self, name: str) -> int:
        params = {**self.p, "name": name, "key": name.casefold()}
        self.sql.run(
            "INSERT INTO learner_group (tenant_id, name, name_key, created_job_id) "
            "VALUES (:t, :name, :key, :job) ON CONFLICT (tenant_id, name_key) DO NOTHING",
            params,
        )
        gid = self.sql.scalar("SELECT id FROM learner_group WHERE tenant_id = :t AND name_key = :key", params)
        return int(gid)

    def _audit(self, full: bool, group_ids: list[int], inactive: int | None) -> None:
        """Before-images of everything the job changes, so ``jobs revert`` can restore them:
        the learner's fields (every field, whatever the change), and each membership change."""
        before = self.sql.json_object(_OLD_VALUES)
        after = self.sql.json_object(_NEW_VALUES)
        created = self.sql.json_object(
            [
                *_NEW_VALUES,
                *((f"group/{name}", f"s.g{i}") for i, name in enumerate(self.req.groups)),
            ]
        )
        insert = "INSERT INTO audit_event (job_id, learner_id, action, before, after, at) "
        if self.touches_existing:
            self.sql.run(
                f"{insert} SELECT :job, s.lid, s.outcome, {before}, {after}, :now FROM {self.src} s "
                f"JOIN learner l ON l.id = s.lid WHERE s.outcome IN {_APPLIED} AND {_FIELDS_DIFFER}",
                self.p,
            )
            self._audit_groups(group_ids, inactive)
        if self.creates:
            self.sql.run(
                f"{insert} SELECT :job, s.lid, 'created', NULL, {created}, :now FROM {self.src} s "
                "WHERE s.outcome = 'created'",
                self.p,
            )
        if full:
            gone_after = self.sql.json_object(
                [("status", "'deactivated'"), ("license", "NULL"), ("reason", "'not in full file'")]
            )
            self.sql.run(
                f"{insert} SELECT :job, a.lid, 'deactivated', {before}, {gone_after}, :now "
                "FROM absent a JOIN learner l ON l.id = a.lid",
                self.p,
            )

    def _audit_groups(self, group_ids: list[int], inactive: int | None) -> None:
        # The rows _apply_groups changes: with an inactive group, a deactivated row's group
        # columns are overruled by the move (audited there).
        eligible = f"s.outcome IN {_APPLIED}" + (" AND s.outcome <> 'deactivated'" if inactive else "")
        for i, gid in enumerate(group_ids):
            params = {**self.p, "name": self.req.groups[i], "gid": gid}
            self.sql.run(
                f"{_AUDIT_GROUP} SELECT :job, s.lid, 'group_added', NULL, :name, :now, :gid "
                f"FROM {self.src} s WHERE {eligible} AND s.d{i} = 1",
                params,
            )
            # A membership a flag ends may have come from a groups_from column: keep its source.
            self.sql.run(
                f"{_AUDIT_MEMBERSHIP} SELECT :job, s.lid, 'group_removed', NULL, :name, :now, :gid, m.source "
                f"FROM {self.src} s JOIN membership m ON m.group_id = :gid AND m.learner_id = s.lid "
                f"WHERE {eligible} AND s.d{i} = -1",
                params,
            )

    def _release_licences(self, full: bool) -> None:
        end = "UPDATE license_assignment SET ended_at = :now, ended_job_id = :job WHERE ended_at IS NULL "
        if self.touches_existing:
            self.sql.run(
                f"{end} AND learner_id IN (SELECT lid FROM {self.src} WHERE outcome <> 'error' AND rel = 1)",
                self.p,
            )
        if full:
            self.sql.run(f"{end} AND learner_id IN (SELECT lid FROM absent)", self.p)

    def _update_learners(self, full: bool) -> None:
        # Indexed columns are set only where they change: rewriting an index entry with the same
        # value still dirties its page, and a nightly file mostly changes titles and groups.
        if self.touches_existing:
            rows = f"FROM {self.src} s WHERE learner.id = s.lid AND s.outcome IN {_APPLIED}"
            self.sql.run(
                "UPDATE learner SET first_name = s.n_first, last_name = s.n_last, title = s.n_title, "
                f"status = s.n_status, fp = s.fp, updated_job_id = :job, updated_at = :now {rows}",
                self.p,
            )
            self.sql.run(
                f"UPDATE learner SET email = s.n_email, uid = s.n_uid {rows} "
                "AND (learner.email <> s.n_email OR learner.uid IS DISTINCT FROM s.n_uid)"
            )
            self.sql.run(
                f"UPDATE learner SET license_type = s.n_lic {rows} "
                "AND learner.license_type IS DISTINCT FROM s.n_lic"
            )
        if full:
            self.sql.run(
                "UPDATE learner SET status = 'deactivated', license_type = NULL, fp = NULL, "
                "updated_job_id = :job, updated_at = :now WHERE id IN (SELECT lid FROM absent)",
                self.p,
            )

    def _count_missing(self) -> None:
        """deactivate_after_missing_runs: a learner in grace counts one more file that left it out;
        everyone else's count (present again, or deactivated now) starts over. Audited, so a
        revert restores the counts too. The partial index keeps this free for tenants with no
        learner in grace."""
        count = "tenant_id = :t AND missing_runs > 0 AND id NOT IN (SELECT lid FROM grace)"
        was = self.sql.json_object([("missing_runs", "missing_runs")])
        zero = self.sql.json_object([("missing_runs", "0")])
        self.sql.run(
            f"{_AUDIT_GROUP} SELECT :job, id, 'missing', {was}, {zero}, :now, NULL FROM learner WHERE {count}",
            self.p,
        )
        self.sql.run(f"UPDATE learner SET missing_runs = 0 WHERE {count}", self.p)
        grace_was = self.sql.json_object([("missing_runs", "g.miss")])
        grace_now = self.sql.json_object([("missing_runs", "g.miss + 1")])
        self.sql.run(
            f"{_AUDIT_GROUP} SELECT :job, g.lid, 'missing', {grace_was}, {grace_now}, :now, NULL FROM grace g",
            self.p,
        )
        self.sql.run("UPDATE learner SET missing_runs = missing_runs + 1 WHERE id IN (SELECT lid FROM grace)")

    def _refresh_fingerprints(self) -> None:
        """A row that changes nothing but is not the row that last set its learner (a reordered
        header, a changed tenant rule, other spacing) becomes the learner's fingerprint, so the
        same file next time is settled by one probe instead of the full comparison."""
        self.sql.run(
            "UPDATE learner SET fp = s.fp FROM pl s WHERE learner.id = s.lid AND s.outcome = 'unchanged' "
            "AND s.err IS NULL AND learner.fp IS DISTINCT FROM s.fp"
        )

    def _insert_learners(self) -> None:
        if not self.creates:
            return
        # New ids follow line order (SQLite: base + line), so the plan's own order is id order
        # and needs no sort.
        self.sql.run(
            "INSERT INTO learner (id, tenant_id, uid, email, first_name, last_name, title, status, "
            "license_type, fp, created_job_id, updated_job_id, created_at, updated_at) "
            "SELECT lid, :t, n_uid, n_email, n_first, n_last, n_title, n_status, n_lic, fp, :job, :job, "
            f":now, :now FROM {self.src} WHERE outcome = 'created'{self.sql.in_line_order}",
            self.p,
        )

    def _grant_licences(self) -> None:
        self.sql.run(
            "INSERT INTO license_assignment (tenant_id, learner_id, license_type, started_at, "
            f"started_job_id) SELECT :t, lid, lic_on, :now, :job FROM {self.src} "
            f"WHERE outcome <> 'error' AND act = 1{self.sql.in_line_order}",
            self.p,
        )

    def _apply_groups(self, group_ids: list[int], inactive: int | None) -> None:
        # With an inactive group, a deactivated learner's group columns are overruled by the move.
        eligible = "outcome <> 'error'" + (" AND outcome <> 'deactivated'" if inactive is not None else "")
        insert = (
            f"INSERT INTO membership (group_id, learner_id) SELECT :gid, lid FROM {self.src} WHERE {eligible}"
        )
        if self.creates and self.sql.pg and group_ids:
            self._join_new_learners(group_ids, eligible)
        for i, gid in enumerate(group_ids):
            params = {"gid": gid}
            if self.creates and not self.sql.pg:
                # A new learner is in no group yet: a plain insert, no conflict check, unless two
                # columns name one group (names that differ only as casefold sees them).
                clash = " ON CONFLICT DO NOTHING" if group_ids.count(gid) > 1 else ""
                self.sql.run(f"{insert} AND d{i} = 1 AND is_new = 1{clash}", params)
            if self.touches_existing:  # only a learner that exists can already be in it, or leave it
                self.sql.run(f"{insert} AND d{i} = 1 AND is_new = 0 ON CONFLICT DO NOTHING", params)
                self.sql.run(
                    "DELETE FROM membership WHERE group_id = :gid AND learner_id IN "
                    f"(SELECT lid FROM {self.src} WHERE {eligible} AND d{i} = -1)",
                    params,
                )

    def _join_new_learners(self, group_ids: list[int], eligible: str) -> None:
        """New learners into their groups in one pass over the plan (PostgreSQL): each row's group
        columns unpivoted by a LATERAL VALUES list, instead of one scan of the whole plan per group.
        A new learner is in no group yet, so no conflict check, unless two columns name one group
        (names that differ only as casefold sees them)."""
        pairs = ", ".join(f"({int(gid)}, d{i})" for i, gid in enumerate(group_ids))
        clash = " ON CONFLICT DO NOTHING" if len(set(group_ids)) < len(group_ids) else ""
        self.sql.run(
            f"INSERT INTO membership (group_id, learner_id) SELECT v.gid, lid FROM {self.src} "
            f"CROSS JOIN LATERAL (VALUES {pairs}) AS v (gid, d) WHERE {eligible} AND is_new = 1 "
            f"AND v.d = 1{clash}"
        )

    def _apply_sources(self, inactive: int | None) -> None:
        """groups_from: leave the group the column gave before, join (creating it) the one it
        names now. A membership the learner already has (from a flag) is left as it is."""
        eligible = "s.outcome <> 'error'" + (
            " AND s.outcome <> 'deactivated'" if inactive is not None else ""
        )
        for k, key in enumerate(self.req.sources):
            params = {**self.p, "src": key}
            self.sql.run(
                "INSERT INTO learner_group (tenant_id, name, name_key, created_job_id) "
                f"SELECT :t, MIN(s.s{k}), s.k{k}, :job FROM {self.src} s WHERE {eligible} AND s.j{k} = 1 "
                f"GROUP BY s.k{k} ON CONFLICT (tenant_id, name_key) DO NOTHING",
                params,
            )
            if self.touches_existing:
                # Audited as they change (the group a row joins may only exist from here on).
                leaving = f"(SELECT s.lid FROM {self.src} s WHERE {eligible} AND s.o{k} IS NOT NULL)"
                self.sql.run(
                    f"{_AUDIT_MEMBERSHIP} SELECT :job, m.learner_id, 'group_removed', NULL, g.name, :now, "
                    "m.group_id, m.source FROM membership m JOIN learner_group g ON g.id = m.group_id "
                    f"WHERE m.source = :src AND m.learner_id IN {leaving}",
                    params,
                )
                self.sql.run(
                    f"DELETE FROM membership WHERE source = :src AND learner_id IN {leaving}", params
                )
            joining = (
                f"FROM {self.src} s JOIN learner_group g ON g.tenant_id = :t AND g.name_key = s.k{k} "
                f"WHERE {eligible} AND s.j{k} = 1"
            )
            self.sql.run(
                f"{_AUDIT_MEMBERSHIP} SELECT :job, s.lid, 'group_added', NULL, g.name, :now, g.id, :src "
                f"{joining} AND s.outcome <> 'created' AND NOT EXISTS (SELECT 1 FROM membership m "
                "WHERE m.group_id = g.id AND m.learner_id = s.lid)",
                params,
            )
            self.sql.run(
                f"INSERT INTO membership (group_id, learner_id, source) SELECT g.id, s.lid, :src {joining} "
                "ON CONFLICT DO NOTHING",
                params,
            )

    def _move_to_inactive(self, inactive: int, full: bool) -> None:
        """Deactivated learners leave their groups for the inactive group; reactivated ones leave
        it. Each membership change is audited before it is made."""
        gone = f"SELECT lid FROM {self.src} WHERE outcome = 'deactivated'"
        if full:
            gone += " UNION ALL SELECT lid FROM absent"
        params = {**self.p, "gid": inactive, "name": self.req.tenant.inactive_group}
        self.sql.run(
            f"{_AUDIT_MEMBERSHIP} SELECT :job, m.learner_id, 'group_removed', NULL, g.name, :now, "
            "m.group_id, m.source FROM membership m JOIN learner_group g ON g.id = m.group_id "
            f"WHERE m.group_id <> :gid AND m.learner_id IN ({gone})",
            params,
        )
        self.sql.run(f"DELETE FROM membership WHERE group_id <> :gid AND learner_id IN ({gone})", params)
        self.sql.run(
            f"{_AUDIT_GROUP} SELECT :job, g.lid, 'group_added', NULL, :name, :now, :gid FROM ({gone}) g "
            "WHERE g.lid IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM membership m WHERE m.group_id = :gid AND m.learner_id = g.lid)",
            params,
        )
        self.sql.run(
            f"INSERT INTO membership (group_id, learner_id) SELECT :gid, lid FROM ({gone}) g "
            "WHERE lid IS NOT NULL ON CONFLICT DO NOTHING",
            params,
        )
        back = f"SELECT lid FROM {self.src} WHERE outcome = 'reactivated'"
        self.sql.run(
            f"{_AUDIT_GROUP} SELECT :job, m.learner_id, 'group_removed', NULL, :name, :now, :gid "
            f"FROM membership m WHERE m.group_id = :gid AND m.learner_id IN ({back})",
            params,
        )
        self.sql.run(f"DELETE FROM membership WHERE group_id = :gid AND learner_id IN ({back})", params)


def _snapshot(*exprs: str) -> list[tuple[str, str]]:
    keys = ("email", "uid", "first_name", "last_name", "title", "status", "license")
    return list(zip(keys, exprs, strict=True))


_OLD_VALUES = _snapshot(
    "l.email", "l.uid", "l.first_name", "l.last_name", "l.title", "l.status", "l.license_type"
)
_NEW_VALUES = _snapshot("s.n_email", "s.n_uid", "s.n_first", "s.n_last", "s.n_title", "s.n_status", "s.n_lic")
# An update that changes only groups has its group_added/removed entries; a field entry whose
# before equals its after would say nothing.
_FIELDS_DIFFER = (
    "("
    + " OR ".join(
        f"{old} IS DISTINCT FROM {new}" for (_, old), (_, new) in zip(_OLD_VALUES, _NEW_VALUES, strict=True)
    )
    + ")"
)
_AUDIT_GROUP = "INSERT INTO audit_event (job_id, learner_id, action, before, after, at, group_id) "
_AUDIT_MEMBERSHIP = (
    "INSERT INTO audit_event (job_id, learner_id, action, before, after, at, group_id, group_source) "
)


ResultLine = tuple[int, str, str | None, str | None]


def result_lines(conn: Connection, default: str) -> Generator[ResultLine, None, None]:
    """(line, outcome, code, message) in file order, streamed, for the rows whose outcome is not
    ``default`` (``Plan.default_outcome``) or that carry a code; a staged line that is not listed
    has outcome ``default`` and no code."""
    query = (
        "SELECT line, outcome, COALESCE(err, note), COALESCE(msg, note_msg) FROM pl "
        f"WHERE outcome <> '{default}' OR err IS NOT NULL OR note IS NOT NULL ORDER BY line"
    )
    if conn.dialect.name == "postgresql":
        # (closed when the reader stops early, e.g. a full disk under the results file)
        with conn.execute(text(query).execution_options(stream_results=True, yield_per=BATCH)) as result:
            for line, outcome, code, message in result:
                yield int(line), str(outcome), code, message
        return
    # sqlite3 cursors step lazily; skipping SQLAlchemy's row objects saves a quarter of the time.
    yield from conn.connection.driver_connection.execute(query)  # type: ignore[union-attr]


def spooled(lines: Generator[ResultLine, None, None], directory: Path) -> Generator[ResultLine, None, None]:
    """``lines`` read to the end now, into an unnamed scratch file in ``directory`` (a batch of
    JSON a line, so memory does not grow with the file), and given back from there: the
    database connection is free once this returns."""
    scratch = tempfile.TemporaryFile("w+", encoding="utf-8", dir=directory)  # noqa: SIM115 (closed by _unspool)
    try:
        with contextlib.closing(lines):
            while batch := list(islice(lines, BATCH)):
                scratch.write(json.dumps(batch, ensure_ascii=False) + "\n")
        scratch.seek(0)
    except BaseException:
        scratch.close()
        raise
    return _unspool(scratch)


def _unspool(scratch: IO[str]) -> Generator[ResultLine, None, None]:
    with scratch:
        for batch in scratch:
            for line, outcome, code, message in json.loads(batch):  # noqa: UP028 (lists -> tuples)
                yield line, outcome, code, message
