"""Read side: learner lookups with history, and the streaming roster export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from orgsyncd.errors import NotFoundError

EXPORT_BATCH = 20_000


@dataclass(frozen=True, slots=True, kw_only=True)
class LearnerView:
    id: int
    uid: str | None
    email: str
    first_name: str | None
    last_name: str | None
    title: str | None
    status: str
    license_type: str | None
    groups: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenceSpan:
    license_type: str
    started_at: datetime
    started_job_id: int | None
    ended_at: datetime | None
    ended_job_id: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditView:
    job_id: int | None
    action: str
    before: dict[str, Any] | str | None
    after: dict[str, Any] | str | None
    at: Any


def _json(value: str | None) -> dict[str, Any] | str | None:
    if value is None:
        return None
    try:
        loaded = json.loads(value)
    except ValueError:
        return value  # group events store the group name as plain text
    return loaded if isinstance(loaded, dict) else value


class LearnerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def count(self, tenant_id: int) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT COUNT(*) FROM learner WHERE tenant_id = :t"), {"t": tenant_id}
                ).scalar_one()
            )

    def page(
        self, tenant_id: int, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[LearnerView]:
        where = "tenant_id = :t" + (" AND status = :s" if status else "")
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, uid, email, first_name, last_name, title, status, license_type "
                    f"FROM learner WHERE {where} ORDER BY email LIMIT :lim OFFSET :off"
                ),
                {"t": tenant_id, "s": status, "lim": limit, "off": offset},
            ).all()
            groups = self._groups_of(conn, [r[0] for r in rows])
        return [self._view(row, groups.get(row[0], [])) for row in rows]

    def find(self, tenant_id: int, email_or_uid: str) -> LearnerView:
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT id, uid, email, first_name, last_name, title, status, license_type "
                    "FROM learner WHERE tenant_id = :t AND (email = :e OR uid = :u) "
                    "ORDER BY CASE WHEN email = :e THEN 0 ELSE 1 END LIMIT 1"
                ),
                {"t": tenant_id, "e": email_or_uid.strip().lower(), "u": email_or_uid.strip()},
            ).first()
            if row is None:
                raise NotFoundError(
                    f"no learner with email or unique_user_id {email_or_uid!r} in this tenant"
                )
            groups = self._groups_of(conn, [row[0]])
        return self._view(row, groups.get(row[0], []))

    def licence_history(self, learner_id: int) -> list[LicenceSpan]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT license_type, started_at, started_job_id, ended_at, ended_job_id "
                    "FROM license_assignment WHERE learner_id = :l ORDER BY id"
                ),
                {"l": learner_id},
            ).all()
        return [
            LicenceSpan(
                license_type=r[0],
                started_at=r[1],
                started_job_id=r[2],
                ended_at=r[3],
                ended_job_id=r[4],
            )
            for r in rows
        ]

    def audit(self, learner_id: int) -> list[AuditView]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT job_id, action, before, after, at FROM audit_event WHERE learner_id = :l ORDER BY id"
                ),
                {"l": learner_id},
            ).all()
        return [
            AuditView(job_id=r[0], action=r[1], before=_json(r[2]), after=_json(r[3]), at=r[4]) for r in rows
        ]

    def _groups_of(self, conn: Connection, ids: list[int]) -> dict[int, list[str]]:
        if not ids:
            return {}
        found: dict[int, list[str]] = {}
        params = {f"i{n}": value for n, value in enumerate(ids)}
        placeholders = ", ".join(f":{key}" for key in params)
        rows = conn.execute(
            text(
                "SELECT m.learner_id, g.name FROM membership m JOIN learner_group g ON g.id = m.group_id "
                f"WHERE m.learner_id IN ({placeholders}) ORDER BY g.name"
            ),
            params,
        )
        for learner_id, name in rows:
            found.setdefault(learner_id, []).append(name)
        return found

    @staticmethod
    def _view(row: Any, groups: list[str]) -> LearnerView:
        return LearnerView(
            id=row[0],
            uid=row[1],
            email=row[2],
            first_name=row[3],
            last_name=row[4],
            title=row[5],
            status=row[6],
            license_type=row[7],
            groups=groups,
        )

    # -- export -------------------------------------------------------------------------------

    def group_names(self, tenant_id: int) -> list[tuple[int, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, name FROM learner_group WHERE tenant_id = :t ORDER BY name_key"),
                {"t": tenant_id},
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def export_rows(self, tenant_id: int, group_ids: list[int]) -> Iterator[tuple[Any, ...]]:
        """(uid, first, last, email, title, license_type, group flags...) for every learner, by id.

        Learners and memberships are two ordered streams merged here, so memory stays flat.
        """
        position = {gid: i for i, gid in enumerate(group_ids)}
        with self.engine.connect() as learners_conn, self.engine.connect() as members_conn:
            learners = learners_conn.execute(
                text(
                    "SELECT id, uid, first_name, last_name, email, title, license_type FROM learner "
                    "WHERE tenant_id = :t ORDER BY id"
                ).execution_options(stream_results=True, yield_per=EXPORT_BATCH),
                {"t": tenant_id},
            )
            # Filtering by the tenant's groups (not a join) lets SQLite stream the learner_id index
            # in order instead of sorting every membership in memory.
            in_groups = ", ".join(str(int(gid)) for gid in group_ids) or "NULL"
            members = members_conn.execute(
                text(
                    "SELECT learner_id, group_id FROM membership "
                    f"WHERE group_id IN ({in_groups}) ORDER BY learner_id"
                ).execution_options(stream_results=True, yield_per=EXPORT_BATCH)
            )
            yield from _merge(learners, members, position)


def _merge(learners: Any, members: Any, position: dict[int, int]) -> Iterator[tuple[Any, ...]]:
    pending = next(members, None)
    width = len(position)
    for lid, uid, first, last, email, title, licence in learners:
        flags = [0] * width
        while pending is not None and pending[0] < lid:
            pending = next(members, None)
        while pending is not None and pending[0] == lid:
            flags[position[pending[1]]] = 1
            pending = next(members, None)
        yield (uid, first, last, email, title, licence, *flags)
