"""Every code a user can read: on a line of a results file (row 0 for the file, row > 0 for a row),
in a summary's ``error``, or as a job's ``error_code`` or an event's ``code`` in ``orgsyncd jobs show``.

To add a code:
  1. one line in ``CODES`` below: ``"your_code": Code(<scope>, "<one-line meaning>")``, where scope
     is ``FILE`` (a row-0 line: the file as a whole), ``ROW`` (a row's line) or ``JOB`` (the job
     record only);
  2. an entry in ``docs/troubleshooting.md`` headed ``### `your_code` `` (what it means, what to
     change), under the section of its scope;
  3. for a FILE or ROW code, a line in the table under "## Codes" in ``docs/roster-format.md``.
``tests/unit/test_codes.py`` and ``tests/unit/test_docs.py`` fail until all are there. The first
finds the codes the source can emit by reading it (string literals passed to ``FileRejected``,
``Issue``, ``Rejected``, ``RowError``, the importer's ``_mark``, ``code=``/``error_code=``
keywords, ``code = "..."`` class attributes, ``{"code": ...}`` dicts, and codes set in the
importer's SQL), so a new code cannot slip past. A function that only hands on a code it was
given is listed in that test's ``_PASS_THROUGH``.
An error that reaches people only as a CLI sentence and never shows its code goes in
``SENTENCE_ONLY`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Scope = Literal["file", "row", "job"]
FILE: Final = "file"
ROW: Final = "row"
JOB: Final = "job"
TROUBLESHOOTING = "docs/troubleshooting.md"


@dataclass(frozen=True, slots=True)
class Code:
    scope: Scope
    meaning: str


CODES: Final[dict[str, Code]] = {
    # -- the file as a whole (row 0 of the results file); errors mean nothing was applied --------
    "unsupported_file_type": Code(FILE, "the file is not a .csv, .csv.gz, .xlsx or PGP-encrypted roster"),
    "empty_file": Code(FILE, "the file has no header line"),
    "encoding_error": Code(FILE, "the file does not decode in the tenant's encoding (UTF-8 unless set)"),
    "encryption_required": Code(FILE, "the tenant requires PGP-encrypted files and this one is not"),
    "decryption_failed": Code(FILE, "a PGP file could not be decrypted (no key, the wrong key, damaged)"),
    "signature_invalid": Code(FILE, "a PGP file has no valid signature by the tenant's pgp_signer_key"),
    "unreadable_workbook": Code(FILE, "an .xlsx file is not a workbook, is password-protected or damaged"),
    "malformed_csv": Code(FILE, "the file is not comma-separated CSV as RFC 4180 writes it"),
    "missing_required_column": Code(FILE, "the header has no primary_email_address column"),
    "duplicate_header": Code(FILE, "the same column appears twice in the header"),
    "invalid_header": Code(
        FILE, "a header cell cannot be used (a group column with no name, strict_headers)"
    ),
    "unknown_license": Code(FILE, "a licence column names a licence type the tenant does not have"),
    "threshold_exceeded": Code(FILE, "the file would deactivate too many licensed learners; the job is held"),
    "header_changed": Code(FILE, "a full file's columns differ from the last applied full file's; held"),
    "stale_file": Code(FILE, "the file is older than the last applied file; the job is held"),
    "empty_roster": Code(FILE, "a full file has a header but no rows; nothing was applied"),
    "approval_refused": Code(FILE, "an approve-/reject- decision file changed nothing; the reason says why"),
    "revert_conflict": Code(
        JOB, "a revert was refused: later jobs changed the learners, or an identity clashes"
    ),
    "rejected": Code(FILE, "an operator rejected the held job; nothing of it was applied"),
    "unknown_column": Code(FILE, "warning: a header column is not a roster column and was ignored"),
    "header_case": Code(FILE, "warning: a header column matched only by ignoring case"),
    "invisible_characters": Code(FILE, "warning: a header column matched by ignoring invisible characters"),
    "file_too_large": Code(
        FILE, "past max_roster_bytes after decompression, or a gzip bomb; not read further"
    ),
    "duplicate_file": Code(FILE, "warning: the same file was already applied; it was not applied again"),
    # -- one row (row > 0): an error means that row changed nothing; the other rows applied -----
    "field_count": Code(ROW, "the row has more or fewer fields than the header"),
    "missing_email": Code(ROW, "the row's email is empty"),
    "invalid_email": Code(ROW, "the row's email is not a valid address"),
    "value_too_long": Code(ROW, "a value is longer than 320 (email) or 255 (others) characters"),
    "blank_value": Code(ROW, "a cell is empty and the tenant requires a value (blank_means = error)"),
    "invalid_value": Code(ROW, "a licence status or group flag is not one of the allowed values"),
    "multiple_active_licenses": Code(ROW, "more than one licence is active in the row"),
    "duplicate_in_file": Code(ROW, "the same learner is on an earlier line of the file"),
    "email_taken": Code(ROW, "the email belongs to another learner"),
    "no_seats": Code(ROW, "activating the licence would exceed its seat count"),
    "uid_adopted": Code(ROW, "note: a learner known by email only was given the row's unique_user_id"),
    # -- the job record ------------------------------------------------------------------------
    "internal_error": Code(JOB, "the job crashed three times (not a problem of the file); it is failed"),
    "storage_unavailable": Code(
        JOB, "event: the data directory was full or read-only; the job stays queued and runs again"
    ),
    "database_unavailable": Code(
        JOB, "the database did not answer; queuing and runs wait and retry, /readyz is 503, nothing is lost"
    ),
    "database_refused": Code(
        JOB, "the database answered but refused database_url (password, role, database name); exit 2"
    ),
    "lease_expired": Code(
        JOB, "event: the instance running the job stopped renewing its lease (hung or died); requeued"
    ),
    "instance_gone": Code(
        JOB, "event: the instance running the job died; its attempt rolled back and the job was requeued"
    ),
    "attempt_stopped": Code(JOB, "event: the process was stopped mid-job; the job was requeued"),
    "approved": Code(JOB, "event: an operator released the held job; it applies at the next run"),
    "retried": Code(JOB, "event: an operator queued the failed job again"),
    "tenant_silent": Code(JOB, "notification: a tenant sent no file for silent_after_h hours"),
    "reverted": Code(JOB, "event: the applied job was undone by a revert job; its status is now reverted"),
}

# Codes of errors that reach people only as one sentence on stderr (the CLI, a failed start-up),
# never as a code; they need no troubleshooting entry.
SENTENCE_ONLY: Final = frozenset(
    {
        "error",
        "config_error",
        "usage_error",
        "not_found",
        "injected_fault",
        "job_state_conflict",  # "job 7 is queued, not held"
        "lease_lost",  # another instance took the job over; this attempt is void (logged)
    }
)


def meaning(code: str) -> str | None:
    """The one-line meaning of a registered code, or None."""
    entry = CODES.get(code)
    return entry.meaning if entry else None


def where_to_read(code: str) -> str:
    """Where the code is explained, for a message that points a person there."""
    return f"{TROUBLESHOOTING}#{code}"
