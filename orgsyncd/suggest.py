"""`orgsyncd tenants suggest-mapping FILE`: a first draft of a tenant's format keys, from the header
and a sample of the rows of a file the HRIS made."""

from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orgsyncd.core.formats import Decoding
from orgsyncd.core.header import EMAIL, EMAIL_ALIAS, FIRST, GROUP_PREFIX, LAST, RESULT_COLUMNS, TITLE, UID
from orgsyncd.core.reader import Record, guess_encoding, is_encrypted, pick_delimiter, read_records
from orgsyncd.core.workbook import is_workbook_name, read_workbook
from orgsyncd.errors import UsageError

SAMPLE_ROWS = 1000
_SAMPLE_BYTES = 1 << 20
_STATUS = "<status>"  # the tenant's default licence column
_GROUP = "<group>"
PLACEHOLDER_STATUS = "LICENCE_status"  # when no tenant (or no default licence) says which
# Common HRIS header names (folded: lower case, punctuation and spaces dropped) -> our column.
_KNOWN: dict[str, str] = {
    **dict.fromkeys(
        ["workemail", "email", "emailaddress", "workemailaddress", "businessemail", "primaryemail",
         "primaryworkemail", "mail", "emailadresse", "courriel", "correoelectronico", "userprincipalname"],
        EMAIL,
    ),
    **dict.fromkeys(
        ["employeeid", "workerid", "employeenumber", "employee", "employeeno", "empid", "personid",
         "personnelnumber", "personalnummer", "userid", "staffid", "badgeid", "uniqueid", "externalid"],
        UID,
    ),
    **dict.fromkeys(
        ["firstname", "legalfirstname", "preferredfirstname", "givenname", "forename", "vorname",
         "prenom", "nombre", "preferredname"],
        FIRST,
    ),
    **dict.fromkeys(
        ["lastname", "legallastname", "preferredlastname", "surname", "familyname", "nachname", "nom",
         "apellido", "apellidos"],
        LAST,
    ),
    **dict.fromkeys(
        ["businesstitle", "jobtitle", "title", "position", "positiontitle", "jobprofile", "role",
         "designation", "stellenbezeichnung", "poste"],
        TITLE,
    ),
    **dict.fromkeys(
        ["workerstatus", "status", "employmentstatus", "employeestatus", "activestatus", "userstatus",
         "accountstatus"],
        _STATUS,
    ),
    **dict.fromkeys(
        ["supervisoryorganization", "department", "dept", "division", "location", "worklocation",
         "businessunit", "team", "organization", "organisation", "abteilung", "site", "office"],
        _GROUP,
    ),
}  # fmt: skip
_ACTIVE_WORDS = frozenset(
    {"active", "on leave", "leave", "leave of absence", "loa", "a", "aktiv", "actif", "activo", "employed",
     "current", "hired", "y", "yes", "true", "1"}
)  # fmt: skip
_INACTIVE_WORDS = frozenset(
    {"terminated", "inactive", "retired", "deceased", "t", "i", "inaktiv", "inactif", "inactivo", "former",
     "separated", "resigned", "withdrawn", "left", "n", "no", "false", "0", "termed", "terminé"}
)  # fmt: skip
_DROP = re.compile(r"[\s_\-./#:()'\"]+")


@dataclass(slots=True)
class Suggestion:
    tenant: str
    source: str
    rows: int
    delimiter: str | None
    encoding: str | None
    columns: dict[str, str] = field(default_factory=dict)
    groups_from: list[str] = field(default_factory=list)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    unknown_values: dict[str, list[str]] = field(default_factory=dict)


def suggest(path: Path, tenant: str, status_column: str | None) -> Suggestion:
    """Look at ``path`` (CSV in any common delimiter and encoding, or .xlsx) and draft the keys."""
    if is_encrypted(path):
        raise UsageError(
            "suggest-mapping reads plaintext files: decrypt a sample first (gpg -d FILE > sample.csv)"
        )
    if not path.is_file():
        raise UsageError(f"{path} is not a readable file")
    encoding, delimiter = (None, None) if is_workbook_name(path.name) else _sniff(path)
    records = _records(path, encoding, delimiter)
    header = next(records, None)
    if header is None:
        raise UsageError(f"{path} has no header line")
    sample = list(itertools.islice(records, SAMPLE_ROWS))
    found = Suggestion(tenant, path.name, len(sample), delimiter, encoding)
    status_target = status_column or PLACEHOLDER_STATUS
    for index, name in enumerate(header[1]):
        _place(found, name.strip(), [row[index] for _, row in sample if index < len(row)], status_target)
    return found


def _sniff(path: Path) -> tuple[str, str]:
    with path.open("rb") as fh:
        head = fh.read(_SAMPLE_BYTES)
    encoding = "utf-8"
    try:
        codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=len(head) < _SAMPLE_BYTES)
    except UnicodeDecodeError:
        encoding = guess_encoding(head) or "cp1252"
    text = head.decode("utf-8-sig" if encoding == "utf-8" else encoding, errors="replace")
    first = next((line for line in text.splitlines() if line.strip()), "")
    return encoding, pick_delimiter(first)


def _records(path: Path, encoding: str | None, delimiter: str | None) -> Iterator[Record]:
    if encoding is None or delimiter is None:
        return read_workbook(path)
    return read_records(path, decoding=Decoding(encoding=encoding, delimiter=delimiter))


def _fold(name: str) -> str:
    return _DROP.sub("", name.lower())


def _place(found: Suggestion, name: str, cells: Sequence[str], status_target: str) -> None:
    lower = name.lower()
    if not name or lower in RESULT_COLUMNS:
        return
    if lower in (EMAIL, EMAIL_ALIAS, UID, FIRST, LAST, TITLE, "active") or lower.startswith(GROUP_PREFIX):
        return  # already one of ours
    if lower.endswith("_status") and " " not in lower:
        return
    target = _KNOWN.get(_fold(name))
    if target is None:
        found.unplaced.append(name)
    elif target == _GROUP:
        found.groups_from.append(name)
    elif target == _STATUS:
        _status(found, name, cells, status_target)
    elif target not in found.columns.values():
        found.columns[name] = target
    else:
        found.unplaced.append(name)  # a second candidate for a column already placed


def _status(found: Suggestion, name: str, cells: Sequence[str], target: str) -> None:
    if target in found.columns.values():
        found.unplaced.append(name)
        return
    found.columns[name] = target
    seen = sorted({cell.strip() for cell in cells if cell.strip()}, key=str.lower)
    mapped: dict[str, str] = {}
    for value in seen:
        word = value.lower()
        if word in ("active", "inactive"):
            continue  # ours already
        if word in _ACTIVE_WORDS:
            mapped[value] = "active"
        elif word in _INACTIVE_WORDS:
            mapped[value] = "inactive"
        else:
            found.unknown_values.setdefault(name, []).append(value)
    if mapped:
        found.values[target] = mapped


def render(found: Suggestion) -> str:
    """The suggestion as TOML to paste, with comments saying what to check."""
    q = json.dumps  # a JSON string is a TOML basic string
    table = f"tenants.{found.tenant}"
    lines = [
        f"# Suggested by `orgsyncd tenants suggest-mapping` from {found.source} "
        f"(the header and {found.rows} sample row{'s' if found.rows != 1 else ''}); check it before use.",
        f"# Paste the keys into your [{table}] table, and the tables after it.",
    ]
    if found.delimiter not in (None, ","):
        lines.append(f"delimiter = {q(found.delimiter)}")
    if found.encoding not in (None, "utf-8"):
        lines.append(f"encoding = {q(found.encoding)}")
    if found.groups_from:
        lines.append(
            f"groups_from = [{', '.join(q(n) for n in found.groups_from)}]   # each value names a group"
        )
    if found.unplaced:
        lines.append(f"# ignore_columns = [{', '.join(q(n) for n in found.unplaced)}]   # or map them below")
    lines += ["", f"[{table}.columns]"]
    lines += [f"{q(theirs)} = {q(ours)}" for theirs, ours in found.columns.items()]
    lines += [
        f"# {q(name)}: not placed; map it to one of our columns, or list it in ignore_columns"
        for name in found.unplaced
    ]
    if PLACEHOLDER_STATUS in found.columns.values():
        lines.append(f"# {PLACEHOLDER_STATUS} above: replace LICENCE with the licence type the status sets")
    if found.values or found.unknown_values:
        lines += ["", f"[{table}.values]"]
        for ours, mapped in found.values.items():
            pairs = ", ".join(f"{q(theirs)} = {q(v)}" for theirs, v in mapped.items())
            lines.append(f"{q(ours)} = {{ {pairs} }}")
        for column, unknown in found.unknown_values.items():
            lines.append(f"# {q(column)} also has {', '.join(q(v) for v in unknown)}: add what each means")
    return "\n".join(lines) + "\n"
