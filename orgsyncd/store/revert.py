"""Undo an applied job from its audit trail, set-based, in the caller's transaction.

Every change a job makes is in ``audit_event`` with its before-image (see the importer's
``Applier``): the learner's fields (licence and status included) on its field event, each
membership change on a group event, grace counts on ``missing`` events. A revert reads the job's
events into a few temporary tables and writes the before-images back with a handful of statements,
whatever the number of learners:

``rv``  the learners the job touched, with their first event, field event and grace event
``rs``  each one's current values (``c_*``) and the values to restore (``r_*``); a learner the job
        created is deactivated (not deleted)
``mc``  the membership changes that bring each learner's groups back to what they were

The revert is itself audited the same way, so it can be reverted too. It is refused as a whole
(nothing written) when later jobs changed the same learners (unless forced), when a restored email
or unique_user_id now belongs to someone else, or when a licence would exceed its seats.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orgsyncd.config import TenantConfig
from orgsyncd.core.changes import Change, Values
from orgsyncd.store.importer import Sql
from orgsyncd.store.plan_file import stream

FIELD_EVENTS = "('updated', 'deactivated', 'reactivated', 'reverted')"
# (audit key, learner column, short name in rs)
_FIELDS = (
    ("email", "email", "email"),
    ("uid", "uid", "uid"),
    ("first_name", "first_name", "first"),
    ("last_name", "last_name", "last"),
    ("title", "title", "title"),
    ("status", "status", "status"),
    ("license", "license_type", "lic"),
)
_KEYS = tuple(key for key, _, _ in _FIELDS)
_TEMP = ("rv", "rs", "mg", "mc")
# Anything of the learner's own state that differs between now and the restore.
_DIFFERS = " OR ".join(f"r.r_{short} IS DISTINCT FROM r.c_{short}" for _, _, short in _FIELDS)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A learner the revert cannot restore, and why."""

    values: Values
    code: str
    message: str


@dataclass(slots=True)
class RevertPlan:
    restored: int = 0
    deactivated: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    refusal: str | None = None  # a sentence for the whole revert (seats, clashes, conflicts)
    refusal_code: str | None = None


class Reverter:
    """Reverts job ``target`` of tenant ``tenant_id`` as job ``job_id`` (0 for a dry run)."""

    def __init__(
        self,
        conn: Connection,
        *,
        tenant_id: int,
        tenant: TenantConfig,
        target: int,
        events: tuple[int | None, int | None],
        job_id: int,
        now: datetime,
        force: bool,
    ) -> None:
        self.sql = Sql(conn)
        self.tenant = tenant
        self.force = force
        low, high = events
        self.p: dict[str, Any] = {"t": tenant_id, "j": target, "r": job_id, "now": self.sql.time(now)}
        # The target's events: by its id range when known (a primary-key range scan), else all.
        self.of_job = "job_id = :j"
        if low is not None and high is not None:
            self.of_job += " AND id BETWEEN :low AND :high"
            self.p |= {"low": low, "high": high}

    # -- public -----------------------------------------------------------------------------

    def prepare(self) -> RevertPlan:
        """Work out the restore; refuse (``refusal`` set, nothing written) when it cannot be done."""
        plan = RevertPlan()
        self._touched()
        later = self._later_changes()
        if later and not self.force:
            plan.conflicts = later
            plan.refusal_code = "revert_conflict"
            plan.refusal = _conflict_sentence(later)
            return plan
        self._restore_values()
        clashes = self._clashes()
        if clashes:
            plan.conflicts = clashes
            plan.refusal_code = "revert_conflict"
            plan.refusal = _clash_sentence(clashes)
            return plan
        seats = self._seats()
        if seats:
            plan.refusal_code, plan.refusal = "no_seats", seats
            return plan
        self._membership_changes()
        plan.restored, plan.deactivated = self._counts()
        return plan

    def apply(self) -> None:
        """Write the restore prepared by ``prepare`` (which found no reason to refuse)."""
        self._audit()
        self._licences()
        self._learners()
        self._memberships()
        self._drop_empty_groups()

    def lines(self) -> Iterator[tuple[str, Change]]:
        """(outcome, change) per learner restored, by learner id: ``restored``, or
        ``deactivated`` for one the job had created."""
        learners = stream(
            self.sql.conn,
            f"SELECT r.lid, r.created, {_columns('c')}, {_columns('r')} FROM rs r "
            f"WHERE ({_DIFFERS} OR r.r_miss <> r.c_miss OR r.lid IN (SELECT lid FROM mc)) ORDER BY r.lid",
        )
        moves = stream(self.sql.conn, "SELECT lid, name, delta FROM mc ORDER BY lid, name")
        pending = next(moves, None)
        for lid, created, *cells in learners:
            groups: list[tuple[str, int]] = []
            while pending is not None and pending[0] < lid:
                pending = next(moves, None)
            while pending is not None and pending[0] == lid:
                groups.append((str(pending[1]), int(pending[2])))
                pending = next(moves, None)
            now, restored = _values(cells[:7]), _values(cells[7:])
            yield ("deactivated" if created else "restored"), Change(now, restored, groups)

    def drop(self) -> None:
        for table in _TEMP:
            self.sql.run(f"DROP TABLE IF EXISTS {table}")

    # -- what the job touched, and who touched it since ------------------------------------

    def _touched(self) -> None:
        self.drop()
        self.sql.run(
            "CREATE TEMPORARY TABLE rv AS SELECT learner_id AS lid, MIN(id) AS first_ev, "
            "MAX(CASE WHEN action = 'created' THEN 1 ELSE 0 END) AS created, "
            f"MIN(CASE WHEN action IN {FIELD_EVENTS} AND before IS NOT NULL THEN id END) AS fev, "
            "MIN(CASE WHEN action = 'missing' THEN id END) AS mev "
            f"FROM audit_event WHERE {self.of_job} GROUP BY learner_id",
            self.p,
        )
        self.sql.run("CREATE UNIQUE INDEX rv_lid ON rv (lid)")

    def _later_changes(self) -> list[Conflict]:
        """Learners a later job changed: restoring them would undo that job's work too."""
        rows = self.sql.run(
            f"SELECT {_current('l')}, MIN(a.job_id) FROM rv JOIN audit_event a ON a.learner_id = rv.lid "
            "JOIN learner l ON l.id = rv.lid "
            "WHERE a.id > rv.first_ev AND (a.job_id IS NULL OR a.job_id <> :j) "
            f"GROUP BY rv.lid, {_current('l')} ORDER BY l.email",
            self.p,
        ).all()
        return [
            Conflict(_values(row[:7]), "revert_conflict", f"changed later by job {row[7]}") for row in rows
        ]

    # -- the values to restore -----------------------------------------------------------------

    def _restore_values(self) -> None:
        pg = self.sql.pg
        restored = []
        for key, column, short in _FIELDS:
            if key == "status":
                created = "'deactivated'"
            elif key == "license":
                created = "NULL"
            else:
                created = f"l.{column}"
            before = (
                f"CASE WHEN {_has(pg, 'e.before', key)} THEN {_get(pg, 'e.before', key)} ELSE l.{column} END"
            )
            restored.append(
                f"CASE WHEN rv.created = 1 THEN {created} WHEN e.id IS NOT NULL THEN {before} "
                f"ELSE l.{column} END AS r_{short}"
            )
        current = ", ".join(f"l.{column} AS c_{short}" for _, column, short in _FIELDS)
        missing = f"CAST({_get(pg, 'me.before', 'missing_runs')} AS INTEGER)"
        self.sql.run(
            f"CREATE TEMPORARY TABLE rs AS SELECT rv.lid, rv.created, {current}, {', '.join(restored)}, "
            f"l.missing_runs AS c_miss, CASE WHEN me.id IS NOT NULL THEN {missing} ELSE l.missing_runs END "
            "AS r_miss FROM rv JOIN learner l ON l.id = rv.lid "
            "LEFT JOIN audit_event e ON e.id = rv.fev LEFT JOIN audit_event me ON me.id = rv.mev"
        )
        self.sql.run("CREATE UNIQUE INDEX rs_lid ON rs (lid)")

    def _clashes(self) -> list[Conflict]:
        """Restored emails and uids that someone else holds now (only after later jobs)."""
        found: list[Conflict] = []
        for short, label in (("email", "email"), ("uid", "unique_user_id")):
            rows = self.sql.run(
                f"SELECT {_columns('c', 'r.')}, o.id FROM rs r JOIN learner o ON o.tenant_id = :t "
                f"AND o.{short} = r.r_{short} AND o.id <> r.lid WHERE r.r_{short} IS DISTINCT FROM r.c_{short}",
                self.p,
            ).all()
            found += [
                Conflict(_values(row[:7]), "revert_conflict", f"its {label} now belongs to another learner")
                for row in rows
            ]
        return found

    def _seats(self) -> str | None:
        limited = {lic: seats for lic, seats in self.tenant.licenses.items() if seats > 0}
        if not limited:
            return None
        moved = "r.r_lic IS DISTINCT FROM r.c_lic"
        gained = self._count(
            f"SELECT r.r_lic, COUNT(*) FROM rs r WHERE r.r_lic IS NOT NULL AND {moved} GROUP BY r.r_lic"
        )
        freed = self._count(
            f"SELECT r.c_lic, COUNT(*) FROM rs r WHERE r.c_lic IS NOT NULL AND {moved} GROUP BY r.c_lic"
        )
        in_use = self._count(
            "SELECT license_type, COUNT(*) FROM learner WHERE tenant_id = :t "
            "AND license_type IS NOT NULL GROUP BY license_type"
        )
        for lic, seats in sorted(limited.items()):
            net = gained.get(lic, 0) - freed.get(lic, 0)
            after = in_use.get(lic, 0) + net
            if net > 0 and after > seats:
                return (
                    f"restoring would give {gained[lic]} learners a {lic} seat back and free "
                    f"{freed.get(lic, 0)}: {after} of {seats} seats; add seats (licenses.{lic}) or free "
                    "some, then revert again"
                )
        return None

    def _count(self, query: str) -> dict[str, int]:
        return {str(key): int(n) for key, n in self.sql.run(query, self.p) if key is not None}

    # -- memberships ---------------------------------------------------------------------------

    def _membership_changes(self) -> None:
        """``mc``: restored learners get back the groups the job's group events say they had
        (the first event per group tells); created learners leave every group, for the
        inactive group if the tenant has one."""
        self.sql.run(
            "CREATE TEMPORARY TABLE mg AS SELECT a.learner_id AS lid, a.group_id AS gid, a.action, "
            "a.after AS name, a.group_source AS src FROM audit_event a JOIN (SELECT MIN(id) AS id FROM audit_event "
            f"WHERE {self.of_job} AND group_id IS NOT NULL GROUP BY learner_id, group_id) f ON f.id = a.id "
            "WHERE a.learner_id NOT IN (SELECT lid FROM rv WHERE created = 1)",
            self.p,
        )
        self._recreate_groups()
        self.sql.run("CREATE TEMPORARY TABLE mc (lid BIGINT, gid BIGINT, name TEXT, delta INTEGER, src TEXT)")
        member = "EXISTS (SELECT 1 FROM membership m WHERE m.group_id = mg.gid AND m.learner_id = mg.lid)"
        for action, delta, state in (("group_added", -1, member), ("group_removed", 1, f"NOT {member}")):
            self.sql.run(
                f"INSERT INTO mc SELECT mg.lid, mg.gid, g.name, {delta}, mg.src FROM mg "
                f"JOIN learner_group g ON g.id = mg.gid WHERE mg.action = '{action}' AND {state}"
            )
        inactive = self._inactive_group()
        self.sql.run(
            "INSERT INTO mc SELECT m.learner_id, m.group_id, g.name, -1, m.source FROM membership m "
            "JOIN learner_group g ON g.id = m.group_id "
            "WHERE m.learner_id IN (SELECT lid FROM rv WHERE created = 1) AND m.group_id <> :gid",
            {"gid": inactive or -1},
        )
        if inactive is not None:
            self.sql.run(
                "INSERT INTO mc SELECT rv.lid, :gid, :name, 1, NULL FROM rv WHERE rv.created = 1 AND NOT EXISTS "
                "(SELECT 1 FROM membership m WHERE m.group_id = :gid AND m.learner_id = rv.lid)",
                {"gid": inactive, "name": self.tenant.inactive_group},
            )

    def _recreate_groups(self) -> None:
        """A group an earlier revert dropped (it had become empty) comes back with its old id, so
        reverting that revert puts its members back; if a group of that name exists again, the
        memberships go to it."""
        missing = self.sql.run(
            "SELECT DISTINCT mg.gid, mg.name FROM mg WHERE mg.action = 'group_removed' "
            "AND NOT EXISTS (SELECT 1 FROM learner_group g WHERE g.id = mg.gid)"
        ).all()
        for gid, name in missing:
            key = {**self.p, "key": str(name).casefold(), "name": name, "gid": gid}
            existing = self.sql.scalar(
                "SELECT id FROM learner_group WHERE tenant_id = :t AND name_key = :key", key
            )
            if existing is not None:
                self.sql.run("UPDATE mg SET gid = :new WHERE gid = :gid", {**key, "new": existing})
                continue
            self.sql.run(
                "INSERT INTO learner_group (id, tenant_id, name, name_key, created_job_id) "
                "VALUES (:gid, :t, :name, :key, :r)",
                key,
            )

    def _inactive_group(self) -> int | None:
        name = self.tenant.inactive_group
        if not name:
            return None
        params = {**self.p, "name": name, "key": name.casefold()}
        self.sql.run(
            "INSERT INTO learner_group (tenant_id, name, name_key, created_job_id) "
            "VALUES (:t, :name, :key, :r) ON CONFLICT (tenant_id, name_key) DO NOTHING",
            params,
        )
        return int(
            self.sql.scalar("SELECT id FROM learner_group WHERE tenant_id = :t AND name_key = :key", params)
        )

    def _counts(self) -> tuple[int, int]:
        rows = dict(
            self.sql.run(
                "SELECT r.created, COUNT(*) FROM rs r WHERE "
                f"({_DIFFERS} OR r.r_miss <> r.c_miss OR r.lid IN (SELECT lid FROM mc)) GROUP BY r.created"
            ).all()
        )
        return int(rows.get(0, 0)), int(rows.get(1, 0))

    # -- writing -------------------------------------------------------------------------------

    def _audit(self) -> None:
        """The revert's own before-images, like an import's: so it can be reverted in turn."""
        now = self.sql.json_object([(key, f"r.c_{short}") for key, _, short in _FIELDS])
        restored = self.sql.json_object(
            [*((key, f"r.r_{short}") for key, _, short in _FIELDS), ("reason", "'revert of job ' || :jt")]
        )
        insert = (
            "INSERT INTO audit_event (job_id, learner_id, action, before, after, at, group_id, group_source) "
        )
        params = {**self.p, "jt": str(self.p["j"])}
        self.sql.run(
            f"{insert} SELECT :r, r.lid, CASE WHEN r.created = 1 THEN 'deactivated' ELSE 'reverted' END, "
            f"{now}, {restored}, :now, NULL, NULL FROM rs r WHERE {_DIFFERS}",
            params,
        )
        was = self.sql.json_object([("missing_runs", "r.c_miss")])
        back = self.sql.json_object([("missing_runs", "r.r_miss")])
        self.sql.run(
            f"{insert} SELECT :r, r.lid, 'missing', {was}, {back}, :now, NULL, NULL FROM rs r "
            "WHERE r.r_miss <> r.c_miss",
            self.p,
        )
        for action, sign in (("group_added", ">"), ("group_removed", "<")):
            self.sql.run(
                f"{insert} SELECT :r, lid, '{action}', NULL, name, :now, gid, src FROM mc WHERE delta {sign} 0",
                self.p,
            )

    def _licences(self) -> None:
        moved = "r_lic IS DISTINCT FROM c_lic"
        self.sql.run(
            "UPDATE license_assignment SET ended_at = :now, ended_job_id = :r WHERE ended_at IS NULL "
            f"AND learner_id IN (SELECT lid FROM rs WHERE c_lic IS NOT NULL AND {moved})",
            self.p,
        )
        self.sql.run(
            "INSERT INTO license_assignment (tenant_id, learner_id, license_type, started_at, started_job_id) "
            f"SELECT :t, lid, r_lic, :now, :r FROM rs WHERE r_lic IS NOT NULL AND {moved} ORDER BY lid",
            self.p,
        )

    def _learners(self) -> None:
        # fp = NULL: the next import compares these learners field by field instead of trusting
        # the fingerprint of the row that set them before.
        self.sql.run(
            "UPDATE learner SET first_name = r.r_first, last_name = r.r_last, title = r.r_title, "
            "status = r.r_status, license_type = r.r_lic, missing_runs = r.r_miss, fp = NULL, "
            "updated_job_id = :r, updated_at = :now FROM rs r WHERE learner.id = r.lid "
            f"AND ({_DIFFERS} OR r.r_miss <> r.c_miss)",
            self.p,
        )
        self.sql.run(
            "UPDATE learner SET email = r.r_email, uid = r.r_uid FROM rs r WHERE learner.id = r.lid "
            "AND (learner.email <> r.r_email OR learner.uid IS DISTINCT FROM r.r_uid)"
        )

    def _memberships(self) -> None:
        self.sql.run(
            "DELETE FROM membership WHERE EXISTS (SELECT 1 FROM mc WHERE mc.delta < 0 "
            "AND mc.gid = membership.group_id AND mc.lid = membership.learner_id)"
        )
        self.sql.run(
            "INSERT INTO membership (group_id, learner_id, source) SELECT gid, lid, src FROM mc WHERE delta > 0 "
            "ON CONFLICT DO NOTHING"
        )

    def _drop_empty_groups(self) -> None:
        """Groups the job created that nobody is in any more did not exist before it."""
        self.sql.run(
            "DELETE FROM learner_group WHERE tenant_id = :t AND created_job_id = :j AND NOT EXISTS "
            "(SELECT 1 FROM membership m WHERE m.group_id = learner_group.id)",
            self.p,
        )


def last_audit_id(conn: Connection) -> int:
    """The newest audit_event id (one probe of the primary key): a job's events come after the
    value read before it applies, and up to the value read after."""
    return int(conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM audit_event")).scalar_one())


def _has(pg: bool, column: str, key: str) -> str:
    return (
        f"jsonb_exists({column}::jsonb, '{key}')" if pg else f"(json_type({column}, '$.{key}') IS NOT NULL)"
    )


def _get(pg: bool, column: str, key: str) -> str:
    return f"({column}::json ->> '{key}')" if pg else f"json_extract({column}, '$.{key}')"


def _current(alias: str) -> str:
    return ", ".join(f"{alias}.{column}" for _, column, _ in _FIELDS)


def _columns(prefix: str, alias: str = "r.") -> str:
    return ", ".join(f"{alias}{prefix}_{short}" for _, _, short in _FIELDS)


def _values(cells: Any) -> Values:
    return dict(zip(_KEYS, cells, strict=True))


def _name(values: Values) -> str:
    return str(values.get("email") or values.get("uid") or "?")


def _conflict_sentence(conflicts: list[Conflict]) -> str:
    shown = ", ".join(
        f"{_name(c.values)} ({c.message.removeprefix('changed later by ')})" for c in conflicts[:10]
    )
    more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
    return (
        f"{len(conflicts)} learner(s) were changed by later jobs: {shown}{more}; reverting would undo "
        "those changes too. Revert the later jobs first (newest first), or use --force"
    )


def _clash_sentence(clashes: list[Conflict]) -> str:
    shown = ", ".join(f"{_name(c.values)} ({c.message})" for c in clashes[:10])
    return f"{len(clashes)} learner(s) cannot get their old identity back: {shown}; nothing was changed"
