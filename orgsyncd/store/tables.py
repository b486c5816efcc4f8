"""The schema. Changes here need an Alembic revision in ``orgsyncd/migrations/versions``.

The tables an import writes in bulk (learner, license_assignment, membership) have no foreign
keys: PostgreSQL checks one per inserted row, which cost a third of a large first import. Their
ids come from the import's own plan, written in one transaction under the tenant's lock; nothing
deletes tenants or learners, and a revert drops only groups nobody is in. The tests check the
references after every import and revert.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

LEARNER_FILLFACTOR = 90


class Tenant(SQLModel, table=True):
    __tablename__ = "tenant"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=63)


MISSING_ONLY = "missing_runs > 0"


class Learner(SQLModel, table=True):
    """Current state of one learner. ``status`` is invited, unassigned or deactivated."""

    __tablename__ = "learner"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email", name="uq_learner_email"),
        UniqueConstraint("tenant_id", "uid", name="uq_learner_uid"),
        Index("ix_learner_tenant_license", "tenant_id", "license_type"),
        # Only learners in their grace period (deactivate_after_missing_runs) are in it: a
        # partial index costs the import nothing for everyone else.
        Index(
            "ix_learner_missing",
            "tenant_id",
            sqlite_where=text(MISSING_ONLY),
            postgresql_where=text(MISSING_ONLY),
        ),
        # Room on each page for a changed row's new version: a re-import that changes names,
        # titles or fingerprints then updates in place (HOT) instead of adding index entries.
        {"postgresql_with": {"fillfactor": LEARNER_FILLFACTOR}},
    )
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int
    uid: str | None = Field(default=None, max_length=255)
    email: str = Field(max_length=320)
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    title: str | None = Field(default=None, max_length=255)
    status: str = Field(max_length=16)
    license_type: str | None = Field(default=None, max_length=128)
    # Fingerprint of the roster row that last set this learner (see core.rows.RowValidator).
    fp: int | None = Field(default=None, sa_type=BigInteger)
    created_job_id: int | None = None
    updated_job_id: int | None = None
    created_at: datetime
    updated_at: datetime
    # Consecutive applied full files that left this learner out (deactivate_after_missing_runs).
    missing_runs: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})


class LicenseAssignment(SQLModel, table=True):
    """Who held which license when; ``ended_at`` is null while the seat is held."""

    __tablename__ = "license_assignment"
    __table_args__ = (Index("ix_license_learner", "learner_id", "ended_at"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int
    learner_id: int
    license_type: str = Field(max_length=128)
    started_at: datetime
    started_job_id: int | None = None
    ended_at: datetime | None = None
    ended_job_id: int | None = None


class LearnerGroup(SQLModel, table=True):
    __tablename__ = "learner_group"
    __table_args__ = (UniqueConstraint("tenant_id", "name_key", name="uq_group_name"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id")
    name: str = Field(max_length=255)
    name_key: str = Field(max_length=255)
    created_job_id: int | None = None


class Membership(SQLModel, table=True):
    """A learner in a group. ``source`` is the groups_from column that gave it (its key, see
    TenantConfig.groups_from), so the learner moves when that column's value changes; None for
    memberships from group/ flags and the inactive group."""

    __tablename__ = "membership"
    __table_args__ = (Index("ix_membership_learner", "learner_id"),)
    group_id: int = Field(primary_key=True)
    learner_id: int = Field(primary_key=True)
    source: str | None = Field(default=None, max_length=255)


RUNNING_ONLY = "status = 'running'"
UNFINALIZED_ONLY = "finalized = false"


class Job(SQLModel, table=True):
    """One roster file. Status: queued, running, succeeded, partially_succeeded, failed, held,
    rejected, duplicate (see ``store/jobs.py`` for the state machine). ``finalized`` turns true once
    result files and archive are in place.

    The claim columns say who works on it: ``instance`` (kept after the job ends, as history),
    ``claimed_at``, ``lease_expires_at`` (renewed by heartbeats), ``claim_token`` (changes with
    every claim; the outcome is written only by the holder of the current token) and
    ``db_session`` (the PostgreSQL backend of the claim's connection, ended when another instance
    takes over an expired lease, so a hung transaction cannot hold row locks forever).
    """

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_tenant_status", "tenant_id", "status"),
        Index("ix_job_tenant_sha", "tenant_id", "sha256"),
        # The database, not the code, keeps a tenant to one running job (procrastinate's lock index).
        Index(
            "uq_job_running_tenant",
            "tenant_id",
            unique=True,
            sqlite_where=text(RUNNING_ONLY),
            postgresql_where=text(RUNNING_ONLY),
        ),
        Index(
            "ix_job_running_lease",
            "lease_expires_at",
            sqlite_where=text(RUNNING_ONLY),
            postgresql_where=text(RUNNING_ONLY),
        ),
        Index(
            "ix_job_unfinalized",
            "id",
            sqlite_where=text(UNFINALIZED_ONLY),
            postgresql_where=text(UNFINALIZED_ONLY),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id")
    file_name: str = Field(max_length=255)
    spool_path: str = Field(unique=True, max_length=1024)
    sha256: str = Field(max_length=64)
    size: int
    mode: str | None = Field(default=None, max_length=8)
    status: str = Field(max_length=24)
    deferred: bool = False
    priority: int = 0
    approved: bool = False
    finalized: bool = False
    attempts: int = 0
    counts: str | None = Field(default=None, sa_column=Column(Text))
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    duplicate_of: int | None = None
    received_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    instance: str | None = Field(default=None, max_length=255)
    claimed_at: datetime | None = None
    lease_expires_at: datetime | None = None
    claim_token: str | None = Field(default=None, max_length=32)
    db_session: str | None = Field(default=None, max_length=64)

    # "import" (a roster file) or "revert" (``jobs revert``; ``target_job_id`` is the job undone).
    kind: str = Field(default="import", max_length=16, sa_column_kwargs={"server_default": "import"})
    target_job_id: int | None = None
    # The file's HRIS timestamp (from its name, else its mtime) and its header's column names
    # (JSON list): what hold_stale_files and hold_on_header_change compare with.
    file_time: datetime | None = None
    columns: str | None = Field(default=None, sa_column=Column(Text))
    # The ids of this job's audit_event rows lie in [audit_from, audit_to] (with other tenants'
    # rows in between on PostgreSQL): what a revert scans instead of the whole table.
    audit_from: int | None = Field(default=None, sa_type=BigInteger)
    audit_to: int | None = Field(default=None, sa_type=BigInteger)


class JobEvent(SQLModel, table=True):
    """One row per job state change, written in the transaction that made the change.

    ``from_status`` is null for the row that created the job. ``actor`` says who: ``instance:<name>``,
    ``cli:<user>``, ``sftp:<tenant>@<peer> <key fingerprint>``.
    """

    __tablename__ = "job_event"
    __table_args__ = (
        Index("ix_job_event_job", "job_id", "id"),
        Index("ix_job_event_tenant", "tenant_id", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    job_id: int
    tenant_id: int
    from_status: str | None = Field(default=None, max_length=24)
    to_status: str = Field(max_length=24)
    actor: str = Field(max_length=255)
    code: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, sa_column=Column(Text))
    at: datetime


class SlotClaim(SQLModel, table=True):
    """Scheduled work that is not a job (a tenant's daily export, pruning), done once per slot by
    whichever instance inserts the row first; an abandoned claim (its lease ran out before
    ``done_at``) may be taken over."""

    __tablename__ = "slot_claim"
    __table_args__ = (UniqueConstraint("kind", "tenant_id", "slot", name="uq_slot_claim"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    tenant_id: int
    slot: str = Field(max_length=40)
    instance: str = Field(max_length=255)
    claimed_at: datetime
    lease_expires_at: datetime
    done_at: datetime | None = None


class AuditEvent(SQLModel, table=True):
    """Every change a job made to a learner, with its before-image, so a job can be reverted.

    Field changes (``created``, ``updated``, ``deactivated``, ``reactivated``, ``reverted``) keep
    before/after as JSON objects of the learner's fields; membership changes (``group_added``,
    ``group_removed``) name the group in ``after`` and carry ``group_id`` and the membership's
    ``source`` (``group_source``, None for group/ flags); ``missing`` keeps
    ``{"missing_runs": n}`` before and after.
    """

    __tablename__ = "audit_event"
    # No index on job_id: it would cost every import (a first import writes a row per learner);
    # a revert finds a job's events by the id range stored on the job (audit_from, audit_to).
    __table_args__ = (Index("ix_audit_learner", "learner_id"),)
    id: int | None = Field(default=None, primary_key=True)
    job_id: int | None = None
    learner_id: int
    action: str = Field(max_length=24)
    before: str | None = Field(default=None, sa_column=Column(Text))
    after: str | None = Field(default=None, sa_column=Column(Text))
    group_id: int | None = None
    group_source: str | None = Field(default=None, max_length=255)  # the membership's source
    at: datetime = Field(sa_column_kwargs={"server_default": text("CURRENT_TIMESTAMP")})


class NotifyEvent(SQLModel, table=True):
    """The outbox: one row per notifiable event, written in the transaction of the state change
    (or, for ``silent``, of the check that found the silence). ``payload`` is the event as sent
    (JSON), fixed at that moment. ``status``: ``new`` until one instance has turned it into
    deliveries for the destinations configured then (``expanded``), or found none (``skipped``)."""

    __tablename__ = "notify_event"
    __table_args__ = (Index("ix_notify_event_new", "id", sqlite_where=text("status = 'new'"),
                            postgresql_where=text("status = 'new'")),)  # fmt: skip
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=36)
    event: str = Field(max_length=32)
    tenant_id: int
    job_id: int | None = None
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(max_length=16)
    created_at: datetime


class NotifyDelivery(SQLModel, table=True):
    """One event to one destination (``webhook``, or ``url:<hash>`` for an Apprise URL, so no
    credential is stored here). The retry schedule lives in ``next_at``/``attempts``, so it
    survives a restart; ``claimed_by``/``claim_until`` is the lease of the instance sending it."""

    __tablename__ = "notify_delivery"
    __table_args__ = (
        UniqueConstraint("notify_event_id", "destination", name="uq_notify_delivery"),
        Index("ix_notify_delivery_due", "next_at", sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
    )  # fmt: skip
    id: int | None = Field(default=None, primary_key=True)
    notify_event_id: int
    destination: str = Field(max_length=64)
    status: str = Field(max_length=16)  # pending, sent, dead (gave up), dropped (unconfigured)
    attempts: int = 0
    next_at: datetime
    claimed_by: str | None = Field(default=None, max_length=64)
    claim_until: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    sent_at: datetime | None = None


class TenantSilence(SQLModel, table=True):
    """The "silent" alert's memory: since when a tenant is watched (for one that never sent a
    file), and the last arrival it was already alerted about, so it alerts once per silence."""

    __tablename__ = "tenant_silence"
    tenant_id: int = Field(primary_key=True)
    watching_since: datetime
    alerted_for: datetime | None = None


class Decision(SQLModel, table=True):
    """Every approve/reject decision on a held job, taken or refused: who (``actor``), how
    (``via``: cli, sftp or inbox), when, on which job, and what came of it."""

    __tablename__ = "job_decision"
    __table_args__ = (
        Index("ix_job_decision_job", "job_id"),
        # One decision per decision file (name, inode, times): a rescan or a second instance
        # that sees the same file again finds it decided.
        UniqueConstraint("tenant_id", "file_key", name="uq_job_decision_file"),
    )
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int
    job_id: int  # the job the decision names (it may not exist, or be another tenant's)
    decision: str = Field(max_length=8)  # approve | reject
    outcome: str = Field(max_length=16)  # approved | rejected | refused
    reason: str | None = Field(default=None, sa_column=Column(Text))
    actor: str = Field(max_length=255)
    via: str = Field(max_length=8)
    file_name: str | None = Field(default=None, max_length=255)
    file_key: str | None = Field(default=None, max_length=128)
    at: datetime
