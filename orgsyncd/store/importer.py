"""Stage -> plan -> apply, set-based.

Validated rows are bulk-loaded into a per-job temporary table ``stg`` (COPY on PostgreSQL, one
executemany on SQLite); every later step is a handful of SQL statements over the whole table, so
the cost per row is a few index probes inside the database and nothing in Python. Planning and
applying run in one transaction: the caller commits it or rolls it back as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, text

from orgsyncd.config import TenantConfig
from orgsyncd.core.rows import STAGE_FIXED, StagedRow

BATCH = 20_000
_TEXT_FIELDS = (("first", "first_name"), ("last", "last_name"), ("title", "title"))
_APPLIED = "('updated', 'deactivated', 'reactivated')"


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


@dataclass(slots=True)
class Plan:
    counts: dict[str, int] = field(default_factory=dict)
    absent: int = 0  # learners deactivated because a full file left them out
    licensed: int = 0
    deactivations: int = 0
    held_reason: str | None = None


class Sql:
    """The few places PostgreSQL and SQLite spell things differently."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"

    def instr(self, haystack: str, needle: str) -> str:
        return f"strpos({haystack}, {needle})" if self.pg else f"instr({haystack}, {needle})"

    def json_object(self, pairs: Sequence[tuple[str, str]]) -> str:
        args = ", ".join(f"'{key}', {expr}" for key, expr in pairs)
        return f"json_build_object({args})::text" if self.pg else f"json_object({args})"

    def time(self, value: datetime) -> Any:
        # SQLite keeps SQLAlchemy's text format for DateTime columns; PostgreSQL takes the object.
        if self.pg:
            return value
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def run(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.conn.execute(text(sql), params or {})

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.conn.execute(text(sql), params or {}).scalar()


def staging_columns(group_count: int) -> list[str]:
    return [*STAGE_FIXED, *(f"g{i}" for i in range(group_count))]


def create_staging(conn: Connection, group_count: int) -> None:
    sql = Sql(conn)
    sql.run("DROP TABLE IF EXISTS stg")
    groups = "".join(f", g{i} INTEGER" for i in range(group_count))
    sql.run(
        "CREATE TEMPORARY TABLE stg (line INTEGER PRIMARY KEY, err TEXT, msg TEXT, ukey TEXT, "
        "uid TEXT, email TEXT, first TEXT, last TEXT, title TEXT, lic_on TEXT, lic_off TEXT"
        f"{groups}, lid BIGINT, adopt INTEGER DEFAULT 0, cur_lic TEXT, cur_status TEXT, "
        "rel INTEGER DEFAULT 0, act INTEGER DEFAULT 0, chg INTEGER DEFAULT 0, outcome TEXT, "
        "note TEXT, note_msg TEXT, n_email TEXT, n_uid TEXT, n_first TEXT, n_last TEXT, "
        "n_title TEXT, n_status TEXT, n_lic TEXT)"
    )


def load_staging(conn: Connection, rows: Iterable[StagedRow], group_count: int) -> int:
    """Bulk-load validated rows; returns how many."""
    columns = staging_columns(group_count)
    if conn.dialect.name == "postgresql":
        return _copy_pg(conn, rows, columns)
    insert = f"INSERT INTO stg ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    total = 0
    iterator = iter(rows)
    while batch := list(islice(iterator, BATCH)):
        conn.exec_driver_sql(insert, batch)  # type: ignore[arg-type]
        total += len(batch)
    return total


def _copy_pg(conn: Connection, rows: Iterable[StagedRow], columns: list[str]) -> int:
    raw = conn.connection.driver_connection
    total = 0
    with raw.cursor() as cur, cur.copy(f"COPY stg ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[union-attr]
        for row in rows:
            copy.write_row(row)
            total += 1
    return total


def drop_staging(conn: Connection) -> None:
    Sql(conn).run("DROP TABLE IF EXISTS stg")
    Sql(conn).run("DROP TABLE IF EXISTS absent")


class Planner:
    """Turns the staged rows into outcomes (row errors included) without touching learner data."""

    def __init__(self, conn: Connection, req: PlanRequest) -> None:
        self.sql = Sql(conn)
        self.req = req
        self.p = {"t": req.tenant_id}

    def plan(self) -> Plan:
        self._index()
        self._duplicates("ukey", "ukey IS NOT NULL")
        if self.req.has_uid:
            self._email_clashes_in_file()
        self._match()
        self._duplicates("lid", "lid IS NOT NULL AND err IS NULL")
        if self.req.has_uid:
            self._email_taken()
        self._current_state()
        self._new_learners()
        absent_licensed = self._absent() if self.req.mode == "full" else {}
        self._seats(absent_licensed)
        self._group_changes()
        self._outcomes()
        return self._summarise(sum(absent_licensed.values()))

    def _index(self) -> None:
        self.sql.run("CREATE INDEX stg_ukey ON stg (ukey)")
        if self.req.has_uid:
            self.sql.run("CREATE INDEX stg_email ON stg (email)")

    def _duplicates(self, key: str, where: str) -> None:
        self.sql.run(
            f"UPDATE stg SET err = 'duplicate_in_file', msg = 'the same learner is already on line ' "
            f"|| d.first_line || '; the first occurrence wins' "
            f"FROM (SELECT {key} AS k, MIN(line) AS first_line FROM stg WHERE {where} "
            f"GROUP BY {key} HAVING COUNT(*) > 1) d "
            f"WHERE stg.{key} = d.k AND stg.line > d.first_line AND stg.err IS NULL"
        )

    def _email_clashes_in_file(self) -> None:
        self.sql.run(
            "UPDATE stg SET err = 'email_taken', msg = 'email ' || stg.email || "
            "' is already used on line ' || d.first_line || ' by another learner' "
            "FROM (SELECT email AS k, MIN(line) AS first_line FROM stg WHERE err IS NULL "
            "GROUP BY email HAVING COUNT(*) > 1) d "
            "WHERE stg.email = d.k AND stg.line > d.first_line AND stg.err IS NULL"
        )

    def _match(self) -> None:
        if self.req.has_uid:
            self.sql.run(
                "UPDATE stg SET lid = l.id FROM learner l "
                "WHERE l.tenant_id = :t AND stg.uid IS NOT NULL AND l.uid = stg.uid",
                self.p,
            )
        # A new uid whose email belongs to a learner without one adopts that learner.
        self.sql.run(
            "UPDATE stg SET lid = l.id, adopt = CASE WHEN stg.uid IS NULL THEN 0 ELSE 1 END "
            "FROM learner l WHERE stg.lid IS NULL AND l.tenant_id = :t AND l.email = stg.email "
            "AND (stg.uid IS NULL OR l.uid IS NULL)",
            self.p,
        )
        self.sql.run("CREATE INDEX stg_lid ON stg (lid)")

    def _email_taken(self) -> None:
        self.sql.run(
            "UPDATE stg SET err = 'email_taken', msg = 'email ' || stg.email || "
            "' already belongs to another learner' FROM learner o "
            "WHERE stg.err IS NULL AND stg.uid IS NOT NULL AND o.tenant_id = :t "
            "AND o.email = stg.email AND (stg.lid IS NULL OR o.id <> stg.lid)",
            self.p,
        )

    def _current_state(self) -> None:
        needle = "'|' || l.license_type || '|'"
        has_off = f"(stg.lic_off IS NOT NULL AND {self.sql.instr('stg.lic_off', needle)} > 0)"
        new_values = [f"n_{col} = {_new_value(col, db_col)}" for col, db_col in _TEXT_FIELDS]
        self.sql.run(
            "UPDATE stg SET cur_lic = l.license_type, cur_status = l.status, "
            "rel = CASE WHEN l.license_type IS NOT NULL AND "
            f"({has_off} OR (stg.lic_on IS NOT NULL AND stg.lic_on <> l.license_type)) "
            "THEN 1 ELSE 0 END, "
            "act = CASE WHEN stg.lic_on IS NOT NULL AND "
            "(l.license_type IS NULL OR stg.lic_on <> l.license_type) THEN 1 ELSE 0 END, "
            "n_email = stg.email, n_uid = COALESCE(stg.uid, l.uid), "
            f"{', '.join(new_values)}, chg = CASE WHEN {_field_changes()} THEN 1 ELSE 0 END "
            "FROM learner l WHERE l.id = stg.lid AND stg.err IS NULL"
        )

    def _new_learners(self) -> None:
        self.sql.run(
            "UPDATE stg SET act = CASE WHEN lic_on IS NULL THEN 0 ELSE 1 END, n_email = email, "
            "n_uid = uid, n_first = NULLIF(first, ''), n_last = NULLIF(last, ''), "
            "n_title = NULLIF(title, '') WHERE lid IS NULL AND err IS NULL"
        )

    def _absent(self) -> dict[str, int]:
        """Full mode: learners the file leaves out (rows with errors still count as present)."""
        self.sql.run(
            "CREATE TEMPORARY TABLE absent AS SELECT id AS lid, license_type AS cur_lic, "
            "status AS cur_status FROM learner WHERE tenant_id = :t AND status <> 'deactivated' "
            "AND id NOT IN (SELECT lid FROM stg WHERE lid IS NOT NULL)",
            self.p,
        )
        rows = self.sql.run(
            "SELECT cur_lic, COUNT(*) FROM absent WHERE cur_lic IS NOT NULL GROUP BY cur_lic"
        )
        return {lic: n for lic, n in rows}

    def _seats(self, absent_licensed: dict[str, int]) -> None:
        limited = {lic: seats for lic, seats in self.req.tenant.licenses.items() if seats > 0}
        if not limited:
            return
        wanted = self._counts(
            "SELECT lic_on, COUNT(*) FROM stg WHERE err IS NULL AND act = 1 GROUP BY lic_on"
        )
        in_use = self._counts(
            "SELECT license_type, COUNT(*) FROM learner WHERE tenant_id = :t "
            "AND license_type IS NOT NULL GROUP BY license_type"
        )
        # Seats freed by this file (pure releases) are reusable by it; a reassignment's old seat
        # is not counted, since the row may still fail and keep it.
        freed = self._counts(
            "SELECT cur_lic, COUNT(*) FROM stg WHERE err IS NULL AND rel = 1 AND lic_on IS NULL "
            "GROUP BY cur_lic"
        )
        for lic, seats in limited.items():
            free = seats - in_use.get(lic, 0) + freed.get(lic, 0) + absent_licensed.get(lic, 0)
            if wanted.get(lic, 0) > max(free, 0):
                self._refuse_seats(lic, seats, max(free, 0))

    def _counts(self, sql: str) -> dict[str, int]:
        return {key: n for key, n in self.sql.run(sql, self.p) if key is not None}

    def _refuse_seats(self, lic: str, seats: int, free: int) -> None:
        self.sql.run(
            "UPDATE stg SET err = 'no_seats', msg = :msg FROM (SELECT line AS l2, ROW_NUMBER() "
            "OVER (ORDER BY line) AS rn FROM stg WHERE err IS NULL AND act = 1 AND lic_on = :lic) r "
            "WHERE stg.line = r.l2 AND r.rn > :free",
            {
                "lic": lic,
                "free": free,
                "msg": f"{seats} of {seats} seats of {lic} in use; free a seat or add seats",
            },
        )

    def _group_changes(self) -> None:
        for i, gid in enumerate(self._existing_group_ids()):
            if gid is None:
                continue
            self.sql.run(
                f"UPDATE stg SET chg = 1 WHERE lid IS NOT NULL AND err IS NULL AND chg = 0 "
                f"AND g{i} IS NOT NULL AND g{i} <> (CASE WHEN EXISTS (SELECT 1 FROM membership m "
                f"WHERE m.group_id = :gid AND m.learner_id = stg.lid) THEN 1 ELSE 0 END)",
                {"gid": gid},
            )

    def _existing_group_ids(self) -> list[int | None]:
        ids = dict(
            self.sql.run(
                "SELECT name_key, id FROM learner_group WHERE tenant_id = :t", self.p
            ).all()
        )
        return [ids.get(name.casefold()) for name in self.req.groups]

    def _outcomes(self) -> None:
        self.sql.run(
            "UPDATE stg SET "
            "n_lic = CASE WHEN act = 1 THEN lic_on WHEN rel = 1 THEN NULL ELSE cur_lic END, "
            "n_status = CASE WHEN act = 1 THEN 'invited' WHEN rel = 1 THEN 'deactivated' "
            "WHEN lid IS NULL THEN 'unassigned' ELSE cur_status END, "
            "outcome = CASE WHEN err IS NOT NULL THEN 'error' WHEN lid IS NULL THEN 'created' "
            "WHEN act = 1 AND cur_status = 'deactivated' THEN 'reactivated' "
            "WHEN rel = 1 AND act = 0 THEN 'deactivated' "
            "WHEN act = 1 OR rel = 1 OR adopt = 1 OR chg = 1 THEN 'updated' ELSE 'unchanged' END, "
            "note = CASE WHEN err IS NULL AND adopt = 1 THEN 'uid_adopted' END, "
            "note_msg = CASE WHEN err IS NULL AND adopt = 1 THEN "
            "'the learner with this email had no unique_user_id and now has this one' END"
        )

    def _summarise(self, absent_licensed: int) -> Plan:
        plan = Plan()
        plan.counts = {
            o: n for o, n in self.sql.run("SELECT outcome, COUNT(*) FROM stg GROUP BY outcome")
        }
        if self.req.mode == "full":
            plan.absent = int(self.sql.scalar("SELECT COUNT(*) FROM absent"))
        plan.licensed = int(
            self.sql.scalar(
                "SELECT COUNT(*) FROM learner WHERE tenant_id = :t AND license_type IS NOT NULL",
                self.p,
            )
        )
        plan.deactivations = plan.counts.get("deactivated", 0) + absent_licensed
        plan.held_reason = self._threshold(plan)
        return plan

    def _threshold(self, plan: Plan) -> str | None:
        cfg = self.req.tenant
        if self.req.mode != "full" or self.req.approved or plan.deactivations == 0:
            return None
        ratio_limit = cfg.max_deactivation_ratio * plan.licensed
        over_ratio = plan.deactivations > ratio_limit
        over_count = (
            cfg.max_deactivations is not None and plan.deactivations > cfg.max_deactivations
        )
        if not (over_ratio or over_count):
            return None
        limit = (
            f"max_deactivations = {cfg.max_deactivations}"
            if over_count
            else f"max_deactivation_ratio = {cfg.max_deactivation_ratio:g}"
        )
        return (
            f"this full import would deactivate {plan.deactivations} of {plan.licensed} licensed "
            f"learners, more than {limit} allows; nothing was applied. An operator can apply it "
            f"with 'orgsyncd jobs approve {self.req.job_id}' or drop it with "
            f"'orgsyncd jobs reject {self.req.job_id}'"
        )


def _new_value(col: str, db_col: str) -> str:
    return f"CASE WHEN stg.{col} IS NULL THEN l.{db_col} WHEN stg.{col} = '' THEN NULL ELSE stg.{col} END"


def _field_changes() -> str:
    checks = [
        f"({_new_value(col, db_col)}) IS DISTINCT FROM l.{db_col}" for col, db_col in _TEXT_FIELDS
    ]
    checks += [
        "stg.email IS DISTINCT FROM l.email",
        "COALESCE(stg.uid, l.uid) IS DISTINCT FROM l.uid",
    ]
    return " OR ".join(checks)


class Applier:
    """Writes a plan: audit first (it needs the before state), then licences, learners, groups."""

    def __init__(self, conn: Connection, req: PlanRequest) -> None:
        self.sql = Sql(conn)
        self.req = req
        now = self.sql.time(req.now)
        self.p: dict[str, Any] = {"t": req.tenant_id, "job": req.job_id, "now": now}

    def apply(self) -> None:
        full = self.req.mode == "full"
        group_ids = self._ensure_groups()
        inactive = self._inactive_group_id()
        self._assign_new_ids()
        self._audit(full, group_ids)
        self._release_licences(full)
        self._update_learners(full)
        self._insert_learners()
        self._grant_licences()
        self._apply_groups(group_ids, inactive)
        if inactive is not None:
            self._move_to_inactive(inactive, full)

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
        gid = self.sql.scalar(
            "SELECT id FROM learner_group WHERE tenant_id = :t AND name_key = :key", params
        )
        return int(gid)

    def _assign_new_ids(self) -> None:
        if self.sql.pg:
            self.sql.run(
                "UPDATE stg SET lid = nextval(pg_get_serial_sequence('learner', 'id')) "
                "WHERE outcome = 'created'"
            )
            return
        base = int(self.sql.scalar("SELECT COALESCE(MAX(id), 0) FROM learner"))
        self.sql.run("UPDATE stg SET lid = :base + line WHERE outcome = 'created'", {"base": base})

    def _audit(self, full: bool, group_ids: list[int]) -> None:
        before = self.sql.json_object(
            _snapshot(
                "l.email",
                "l.uid",
                "l.first_name",
                "l.last_name",
                "l.title",
                "l.status",
                "l.license_type",
            )
        )
        after = self.sql.json_object(
            _snapshot(
                "s.n_email",
                "s.n_uid",
                "s.n_first",
                "s.n_last",
                "s.n_title",
                "s.n_status",
                "s.n_lic",
            )
        )
        created = self.sql.json_object(
            [
                *_snapshot(
                    "s.n_email",
                    "s.n_uid",
                    "s.n_first",
                    "s.n_last",
                    "s.n_title",
                    "s.n_status",
                    "s.n_lic",
                ),
                *((f"group/{name}", f"s.g{i}") for i, name in enumerate(self.req.groups)),
            ]
        )
        insert = "INSERT INTO audit_event (job_id, learner_id, action, before, after, at) "
        self.sql.run(
            f"{insert} SELECT :job, s.lid, s.outcome, {before}, {after}, :now FROM stg s "
            f"JOIN learner l ON l.id = s.lid WHERE s.outcome IN {_APPLIED}",
            self.p,
        )
        self.sql.run(
            f"{insert} SELECT :job, s.lid, 'created', NULL, {created}, :now FROM stg s "
            "WHERE s.outcome = 'created'",
            self.p,
        )
        if full:
            gone_before = self.sql.json_object(
                [("status", "a.cur_status"), ("license", "a.cur_lic")]
            )
            gone_after = self.sql.json_object(
                [("status", "'deactivated'"), ("license", "NULL"), ("reason", "'not in full file'")]
            )
            self.sql.run(
                f"{insert} SELECT :job, a.lid, 'deactivated', {gone_before}, {gone_after}, :now "
                "FROM absent a",
                self.p,
            )
        self._audit_groups(group_ids)

    def _audit_groups(self, group_ids: list[int]) -> None:
        insert = "INSERT INTO audit_event (job_id, learner_id, action, before, after, at) "
        for i, gid in enumerate(group_ids):
            name = {**self.p, "gid": gid, "name": self.req.groups[i]}
            member = "EXISTS (SELECT 1 FROM membership m WHERE m.group_id = :gid AND m.learner_id = s.lid)"
            for flag, action, test in (
                (1, "group_added", f"NOT {member}"),
                (0, "group_removed", member),
            ):
                self.sql.run(
                    f"{insert} SELECT :job, s.lid, '{action}', NULL, :name, :now FROM stg s "
                    f"WHERE s.outcome IN {_APPLIED} AND s.g{i} = {flag} AND {test}",
                    name,
                )

    def _release_licences(self, full: bool) -> None:
        end = "UPDATE license_assignment SET ended_at = :now, ended_job_id = :job WHERE ended_at IS NULL "
        self.sql.run(
            f"{end} AND learner_id IN (SELECT lid FROM stg WHERE err IS NULL AND rel = 1)", self.p
        )
        if full:
            self.sql.run(f"{end} AND learner_id IN (SELECT lid FROM absent)", self.p)

    def _update_learners(self, full: bool) -> None:
        self.sql.run(
            "UPDATE learner SET email = s.n_email, uid = s.n_uid, first_name = s.n_first, "
            "last_name = s.n_last, title = s.n_title, status = s.n_status, license_type = s.n_lic, "
            "updated_job_id = :job, updated_at = :now FROM stg s "
            f"WHERE learner.id = s.lid AND s.outcome IN {_APPLIED}",
            self.p,
        )
        if full:
            self.sql.run(
                "UPDATE learner SET status = 'deactivated', license_type = NULL, "
                "updated_job_id = :job, updated_at = :now WHERE id IN (SELECT lid FROM absent)",
                self.p,
            )

    def _insert_learners(self) -> None:
        self.sql.run(
            "INSERT INTO learner (id, tenant_id, uid, email, first_name, last_name, title, status, "
            "license_type, created_job_id, updated_job_id, created_at, updated_at) "
            "SELECT lid, :t, n_uid, n_email, n_first, n_last, n_title, n_status, n_lic, :job, :job, "
            ":now, :now FROM stg WHERE outcome = 'created' ORDER BY lid",
            self.p,
        )

    def _grant_licences(self) -> None:
        self.sql.run(
            "INSERT INTO license_assignment (tenant_id, learner_id, license_type, started_at, "
            "started_job_id) SELECT :t, lid, lic_on, :now, :job FROM stg "
            "WHERE err IS NULL AND act = 1 ORDER BY lid",
            self.p,
        )

    def _apply_groups(self, group_ids: list[int], inactive: int | None) -> None:
        # With an inactive group, a deactivated learner's group columns are overruled by the move.
        eligible = "err IS NULL" + (" AND outcome <> 'deactivated'" if inactive is not None else "")
        for i, gid in enumerate(group_ids):
            params = {"gid": gid}
            self.sql.run(
                "INSERT INTO membership (group_id, learner_id) SELECT :gid, lid FROM stg "
                f"WHERE {eligible} AND g{i} = 1 ON CONFLICT DO NOTHING",
                params,
            )
            self.sql.run(
                "DELETE FROM membership WHERE group_id = :gid AND learner_id IN "
                f"(SELECT lid FROM stg WHERE {eligible} AND g{i} = 0)",
                params,
            )

    def _move_to_inactive(self, inactive: int, full: bool) -> None:
        gone = "SELECT lid FROM stg WHERE outcome = 'deactivated'"
        if full:
            gone += " UNION ALL SELECT lid FROM absent"
        params = {"gid": inactive}
        self.sql.run(
            f"DELETE FROM membership WHERE group_id <> :gid AND learner_id IN ({gone})", params
        )
        self.sql.run(
            f"INSERT INTO membership (group_id, learner_id) SELECT :gid, lid FROM ({gone}) g "
            "WHERE lid IS NOT NULL ON CONFLICT DO NOTHING",
            params,
        )
        self.sql.run(
            "DELETE FROM membership WHERE group_id = :gid AND learner_id IN "
            "(SELECT lid FROM stg WHERE outcome = 'reactivated')",
            params,
        )


def _snapshot(*exprs: str) -> list[tuple[str, str]]:
    keys = ("email", "uid", "first_name", "last_name", "title", "status", "license")
    return list(zip(keys, exprs, strict=True))


def result_lines(conn: Connection) -> Iterator[tuple[int, str, str | None, str | None]]:
    """(line, outcome, code, message) in file order, streamed from the staging table."""
    result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(
        text(
            "SELECT line, outcome, COALESCE(err, note), COALESCE(msg, note_msg) FROM stg ORDER BY line"
        )
    )
    for line, outcome, code, message in result:
        yield int(line), str(outcome), code, message


def counts_json(counts: dict[str, int]) -> str:
    return json.dumps(counts, sort_keys=True)
