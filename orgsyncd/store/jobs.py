"""The job queue, in the database: jobs are rows, and the database decides who runs what."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from orgsyncd.errors import NotFoundError, UsageError
from orgsyncd.store.tables import Job, Tenant

QUEUED = "queued"
HELD = "held"
TERMINAL = ("succeeded", "partially_succeeded", "failed", "rejected", "duplicate")
APPLIED = ("succeeded", "partially_succeeded")
STATUSES = (QUEUED, HELD, *TERMINAL)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    id: int
    tenant: str
    tenant_id: int
    file_name: str
    spool_path: str
    sha256: str
    size: int
    mode: str | None
    status: str
    deferred: bool
    priority: int
    approved: bool
    finalized: bool
    attempts: int
    counts: dict[str, int] | None
    error_code: str | None
    error_message: str | None
    duplicate_of: int | None
    received_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def utcnow() -> datetime:
    return datetime.now(UTC)


def _record(job: Job, tenant: str) -> JobRecord:
    data = job.model_dump()
    data["counts"] = json.loads(job.counts) if job.counts else None
    return JobRecord(tenant=tenant, **data)


def tenant_lock_key(tenant_id: int) -> int:
    """A PostgreSQL advisory-lock key per tenant: one instance at a time works a tenant's queue."""
    return zlib.crc32(f"orgsyncd-tenant-{tenant_id}".encode())


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._tenant_ids: dict[str, int] = {}

    def tenant_id(self, name: str) -> int:
        if name not in self._tenant_ids:
            self._tenant_ids[name] = self._ensure_tenant(name)
        return self._tenant_ids[name]

    def _ensure_tenant(self, name: str) -> int:
        lookup = text("SELECT id FROM tenant WHERE name = :n")
        with self.engine.connect() as conn:
            found = conn.execute(lookup, {"n": name}).scalar()
        if found is not None:
            return int(found)
        try:
            with self.engine.begin() as conn:
                conn.execute(text("INSERT INTO tenant (name) VALUES (:n)"), {"n": name})
        except IntegrityError:
            pass  # another instance created it first
        with self.engine.connect() as conn:
            return int(conn.execute(lookup, {"n": name}).scalar_one())

    def add(
        self,
        *,
        tenant: str,
        file_name: str,
        spool_path: str,
        sha256: str,
        size: int,
        deferred: bool,
    ) -> int | None:
        """Insert a queued job; None when that spool file is already a job (queuing is idempotent)."""
        job = Job(
            tenant_id=self.tenant_id(tenant),
            file_name=file_name,
            spool_path=spool_path,
            sha256=sha256,
            size=size,
            status=QUEUED,
            deferred=deferred,
            received_at=utcnow(),
        )
        with Session(self.engine) as session:
            session.add(job)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return None
            return job.id

    def has_spool_path(self, spool_path: str) -> bool:
        with Session(self.engine) as session:
            found = session.exec(select(Job.id).where(Job.spool_path == spool_path)).first()
            return found is not None

    def get(self, job_id: int) -> JobRecord:
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"there is no job {job_id}")
            tenant = session.get(Tenant, job.tenant_id)
            assert tenant is not None
            return _record(job, tenant.name)

    def recent(
        self, tenant: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        query = select(Job, Tenant.name).join(Tenant, col(Tenant.id) == col(Job.tenant_id))
        if tenant:
            query = query.where(Tenant.name == tenant)
        if status:
            query = query.where(Job.status == status)
        with Session(self.engine) as session:
            rows = session.exec(query.order_by(col(Job.id).desc()).limit(limit)).all()
            return [_record(job, name) for job, name in rows]

    def next_for_tenant(self, tenant: str, include_deferred: bool) -> JobRecord | None:
        """The head of a tenant's queue, or None when it is empty or blocked.

        A held job blocks everything after it, and so does a job deferred to the daily run when
        the hourly run looks: files of one tenant never apply out of order.
        """
        tenant_id = self.tenant_id(tenant)
        with Session(self.engine) as session:
            held = session.exec(
                select(func.count()).where(Job.tenant_id == tenant_id, Job.status == HELD)
            ).one()
            if held:
                return None
            head = session.exec(
                select(Job)
                .where(Job.tenant_id == tenant_id, Job.status == QUEUED)
                .order_by(col(Job.priority).desc(), col(Job.id))
                .limit(1)
            ).first()
            if head is None or (head.deferred and not include_deferred):
                return None
            return _record(head, tenant)

    def is_queued(self, conn: Connection, job_id: int) -> bool:
        row = conn.execute(text("SELECT status FROM job WHERE id = :id"), {"id": job_id}).first()
        return row is not None and row[0] == QUEUED

    def earlier_applied(self, tenant_id: int, sha256: str, job_id: int) -> int | None:
        with Session(self.engine) as session:
            return session.exec(
                select(Job.id)
                .where(
                    Job.tenant_id == tenant_id,
                    Job.sha256 == sha256,
                    col(Job.status).in_(APPLIED),
                    Job.id != job_id,
                )
                .order_by(col(Job.id))
                .limit(1)
            ).first()

    def finish(self, conn: Connection, job_id: int, **values: Any) -> None:
        """Record a job's outcome inside the caller's transaction (the same one that applied it)."""
        if "counts" in values and values["counts"] is not None:
            values["counts"] = json.dumps(values["counts"], sort_keys=True)
        conn.execute(update(Job).where(col(Job.id) == job_id).values(**values))

    def set(self, job_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            self.finish(conn, job_id, **values)

    def unfinalized(self) -> list[JobRecord]:
        query = (
            select(Job, Tenant.name)
            .join(Tenant, col(Tenant.id) == col(Job.tenant_id))
            .where(col(Job.finalized).is_(False), Job.status != QUEUED)
            .order_by(col(Job.id))
        )
        with Session(self.engine) as session:
            return [_record(job, name) for job, name in session.exec(query).all()]

    def queue_depth(self, tenants: Sequence[str] | None = None) -> int:
        """Queued jobs (of these tenants, when given)."""
        query = select(func.count()).select_from(Job).where(Job.status == QUEUED)
        if tenants is not None:
            query = query.join(Tenant, col(Tenant.id) == col(Job.tenant_id)).where(
                col(Tenant.name).in_(list(tenants))
            )
        with Session(self.engine) as session:
            return int(session.exec(query).one())

    def transition(self, job_id: int, allowed: Sequence[str], verb: str, **values: Any) -> JobRecord:
        job = self.get(job_id)
        if job.status not in allowed:
            raise UsageError(f"job {job_id} is {job.status}; only {' or '.join(allowed)} jobs can be {verb}")
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Job).where(col(Job.id) == job_id, col(Job.status) == job.status).values(**values)
            ).rowcount
        if not changed:
            raise UsageError(f"job {job_id} changed while this command ran; look at it again")
        return self.get(job_id)
