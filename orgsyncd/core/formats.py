"""A tenant's own file format, as the core sees it: how its bytes are decoded and split
(``Decoding``), and how its columns and values become the roster contract's (``Mapping``).

Both are plain data built once per job from the tenant's configuration; the checks here are the
ones configuration loading and ``tenants check`` run, so a bad mapping is found at start, not at
the first file.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field

from orgsyncd.core.header import (
    ACTIVE,
    EMAIL,
    EMAIL_ALIAS,
    FIRST,
    GROUP_PREFIX,
    LAST,
    STATUS_SUFFIX,
    TITLE,
    UID,
    fold,
)

DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
ALL_GROUPS = "group/*"
_STATUS_VALUES = frozenset({"active", "inactive", ""})
_FLAG_VALUES = frozenset({"true", "false", "yes", "no", "1", "0", ""})
_GROUP_VALUES = frozenset({"1", "0", ""})
_TEXT_TARGETS = (FIRST, LAST, TITLE)
MAX_NAME = 255


def encoding_name(encoding: str) -> str:
    """The codec's canonical name ("UTF8" -> "utf-8"); LookupError for an unknown one."""
    return codecs.lookup(encoding).name


def is_utf8(encoding: str) -> bool:
    return encoding_name(encoding) == "utf-8"


@dataclass(frozen=True, slots=True)
class Decoding:
    """Bytes -> records: the codec, and the delimiter (or "auto": picked from the header line)."""

    encoding: str = "utf-8"
    delimiter: str = ","
    key: str = "[tenants.<name>]"  # the configuration table named in messages


@dataclass(frozen=True, slots=True)
class Mapping:
    """Their header and values -> ours. Keys are folded (see ``fold``)."""

    key: str = "[tenants.<name>]"
    columns: MappingABC[str, str] = field(default_factory=dict)  # their column -> our column
    values: MappingABC[str, MappingABC[str, str]] = field(default_factory=dict)  # ours -> theirs -> ours
    groups_from: tuple[str, ...] = ()
    ignore: frozenset[str] = frozenset()
    shown: MappingABC[str, tuple[str, ...]] = field(default_factory=dict)  # ours -> theirs as configured

    @property
    def is_empty(self) -> bool:
        return not (self.columns or self.values or self.groups_from or self.ignore)

    def values_for(self, column: str) -> MappingABC[str, str] | None:
        """The value translation for one of our columns (canonical, lower case); a group flag
        column falls back to ``group/*``."""
        found = self.values.get(column)
        if found is None and column.startswith(GROUP_PREFIX):
            found = self.values.get(ALL_GROUPS)
        return found

    def accepted(self, column: str) -> tuple[str, ...]:
        """Their values for one of our columns, as configured (for messages)."""
        found = self.shown.get(column)
        if found is None and column.startswith(GROUP_PREFIX):
            found = self.shown.get(ALL_GROUPS)
        return found or ()

    def fingerprint_context(self) -> tuple[object, ...]:
        """What of the mapping decides a row's effect (for the row fingerprints' seed)."""
        return (
            sorted(self.columns.items()),
            sorted((k, sorted(v.items())) for k, v in self.values.items()),
            self.groups_from,
        )


def build_mapping(
    key: str,
    columns: MappingABC[str, str],
    values: MappingABC[str, MappingABC[str, str]],
    groups_from: Sequence[str],
    ignore: Iterable[str],
) -> Mapping:
    return Mapping(
        key=key,
        columns={fold(theirs): ours.strip() for theirs, ours in columns.items()},
        values={
            _value_key(ours): {fold(theirs): target.strip() for theirs, target in table.items()}
            for ours, table in values.items()
        },
        groups_from=tuple(fold(name) for name in groups_from),
        ignore=frozenset(fold(name) for name in ignore),
        shown={_value_key(ours): tuple(table) for ours, table in values.items()},
    )


def _value_key(ours: str) -> str:
    lower = ours.strip().lower()
    if lower.startswith(GROUP_PREFIX) and lower != ALL_GROUPS:
        return GROUP_PREFIX + lower[len(GROUP_PREFIX) :].strip()
    return EMAIL if lower == EMAIL_ALIAS else lower


# -- checks run when the configuration loads ---------------------------------------------------


def column_problem(target: str, license_types: Sequence[str]) -> str | None:
    """Why ``target`` is not a column of the roster contract for this tenant (None: it is)."""
    lower = target.strip().lower()
    if lower in (EMAIL, EMAIL_ALIAS, UID, FIRST, LAST, TITLE, ACTIVE):
        return None
    if lower.startswith(GROUP_PREFIX):
        return None if lower[len(GROUP_PREFIX) :].strip() else "a group column needs a name: group/<name>"
    if lower.endswith(STATUS_SUFFIX):
        license_type = lower[: -len(STATUS_SUFFIX)]
        if license_type in license_types:
            return None
        known = ", ".join(f"{t}{STATUS_SUFFIX}" for t in license_types) or "none"
        return f"{license_type!r} is not one of this tenant's licenses (license columns: {known})"
    return (
        "not a roster column; use one of primary_email_address, unique_user_id, preferred_first_name, "
        "preferred_last_name, work_title, active, <license>_status or group/<name>"
    )


def check_columns(columns: MappingABC[str, str], license_types: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for theirs, ours in columns.items():
        if not fold(theirs):
            raise ValueError("columns: an empty column name cannot be mapped")
        if fold(theirs) in seen:
            raise ValueError(f"columns: {theirs!r} and {seen[fold(theirs)]!r} are the same column")
        seen[fold(theirs)] = theirs
        problem = column_problem(ours, license_types)
        if problem is not None:
            raise ValueError(f"columns.{theirs!r} = {ours!r}: {problem}")


def check_values(
    values: MappingABC[str, MappingABC[str, str]],
    columns: MappingABC[str, str],
    license_types: Sequence[str],
) -> None:
    mapped_from = {fold(theirs): ours for theirs, ours in columns.items()}
    for ours, table in values.items():
        lower = ours.strip().lower()
        if lower in (EMAIL, EMAIL_ALIAS, UID):
            raise ValueError(f"values.{ours!r}: identity columns are never translated")
        if lower != ALL_GROUPS and column_problem(ours, license_types) is not None:
            hint = (
                f" ({ours!r} is their name for {mapped_from[fold(ours)]!r}: write values.{mapped_from[fold(ours)]!r})"
                if fold(ours) in mapped_from
                else " (values are keyed by our column name, or group/* for every group column)"
            )
            raise ValueError(f"values.{ours!r}: {column_problem(ours, license_types)}{hint}")
        allowed = _allowed_targets(lower)
        for theirs, target in table.items():
            if allowed is not None and target.strip().lower() not in allowed:
                accepted = ", ".join(sorted(repr(v) for v in allowed if v))
                raise ValueError(f"values.{ours!r}.{theirs!r} = {target!r}: use one of {accepted} (or '')")
            if len(target) > MAX_NAME:
                raise ValueError(f"values.{ours!r}.{theirs!r}: longer than {MAX_NAME} characters")


def _allowed_targets(lower: str) -> frozenset[str] | None:
    if lower.endswith(STATUS_SUFFIX):
        return _STATUS_VALUES
    if lower == ACTIVE:
        return _FLAG_VALUES
    if lower.startswith(GROUP_PREFIX):
        return _GROUP_VALUES
    return None  # text columns take any value


def check_names(columns: MappingABC[str, str], groups_from: Sequence[str], ignore: Sequence[str]) -> None:
    """One of their columns has one role: mapped, a group source, or ignored."""
    roles: dict[str, str] = {}
    for role, names in (("columns", list(columns)), ("groups_from", groups_from), ("ignore_columns", ignore)):
        for name in names:
            folded = fold(name)
            if not folded:
                raise ValueError(f"{role}: an empty column name")
            if folded in roles:
                where = roles[folded]
                same = "twice" if where == role else f"in both {where} and {role}"
                raise ValueError(f"column {name!r} is listed {same}; give each column one role")
            roles[folded] = role


def check_delimiter(delimiter: str) -> str:
    if delimiter != "auto" and delimiter not in DELIMITERS:
        raise ValueError(f'{delimiter!r}: use ",", ";", "\\t", "|" or "auto"')
    return delimiter


def check_encoding(encoding: str) -> str:
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise ValueError(
            f"{encoding!r} is not a codec Python knows (e.g. utf-8, cp1252, latin-1, utf-16)"
        ) from None
    if not getattr(codec, "_is_text_encoding", True):
        raise ValueError(f"{encoding!r} is not a text encoding")
    return encoding
