"""Header analysis: which column means what, and every file-level header problem of the contract."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orgsyncd.errors import FileRejected

if TYPE_CHECKING:
    from orgsyncd.core.formats import Mapping

EMAIL = "primary_email_address"
EMAIL_ALIAS = "primary_email"
UID = "unique_user_id"
FIRST = "preferred_first_name"
LAST = "preferred_last_name"
TITLE = "work_title"
ACTIVE = "active"
STATUS_SUFFIX = "_status"
GROUP_PREFIX = "group/"
RESULT_COLUMNS = frozenset({"row", "outcome", "code", "message"})
TEXT_COLUMNS = (UID, FIRST, LAST, TITLE)
_HANDLED = ""  # no mapping target is empty
# Wider headers are not rosters. The group limit keeps the per-job tables inside what both
# databases allow (PostgreSQL: 1,600 columns per table; each group takes two in the plan).
MAX_COLUMNS = 2_000
MAX_GROUP_COLUMNS = 500
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def fold(name: str) -> str:
    """How header names and mapped values are compared: trimmed, BOM dropped, case ignored."""
    return name.replace("\ufeff", "").strip().lower()


@dataclass(frozen=True, slots=True)
class Issue:
    """A file-level line of the results file (row 0)."""

    outcome: str  # "error" or "warning"
    code: str
    message: str


@dataclass(slots=True)
class Layout:
    """Where each known column sits in the header (indexes into a record)."""

    width: int
    email: int = -1
    row: int = -1  # a results file uploaded again: its `row` column marks our own row-0 lines
    text: dict[str, int] = field(default_factory=dict)  # uid/first/last/title -> index
    statuses: list[tuple[int, str]] = field(default_factory=list)  # (index, license type)
    active: int = -1
    groups: list[tuple[int, str]] = field(default_factory=list)  # (index, group name as given)
    sources: list[tuple[int, str]] = field(default_factory=list)  # (index, groups_from key)
    names: list[str] = field(default_factory=list)  # header cells as given, trimmed
    columns: dict[int, str] = field(default_factory=dict)  # index -> our column (`active` kept)
    renamed: set[int] = field(default_factory=set)  # indexes renamed by the tenant's mapping
    warnings: list[Issue] = field(default_factory=list)

    @property
    def has_license_column(self) -> bool:
        return bool(self.statuses) or self.active >= 0


@dataclass(frozen=True, slots=True)
class HeaderRules:
    license_types: Sequence[str]
    default_license: str | None
    strict_headers: bool = False
    delimiter: str = ","  # the one the file was split with, for the "looks X-separated" message
    key: str = ""  # the tenant's configuration table, e.g. [tenants.acme], named in messages


def analyse_header(cells: Sequence[str], rules: HeaderRules, mapping: Mapping | None = None) -> Layout:
    """Where each column of ours is. With a tenant ``mapping`` their names are renamed first
    (matched after ``fold``); our own names are always accepted too."""
    if len(cells) > MAX_COLUMNS:
        raise FileRejected(
            "invalid_header",
            f"the header has {len(cells):,} columns; a roster has at most {MAX_COLUMNS:,} "
            "(check that this is the roster export and that its delimiter is right)",
        )
    if len(cells) == 1 and (other := _other_delimiter(cells[0], rules)):
        raise other  # before its one cell is read as an odd column name
    layout = Layout(width=len(cells))
    seen: dict[str, int] = {}
    for index, raw in enumerate(cells):
        name = raw.replace("\ufeff", "").strip()
        layout.names.append(name)
        target = _mapped(layout, index, name, mapping, seen)
        if target != _HANDLED:
            _place(layout, index, name, rules, seen, target)
    if layout.email < 0:
        raise _missing_email(layout.names, rules)
    if len(layout.groups) > MAX_GROUP_COLUMNS:
        raise FileRejected(
            "invalid_header",
            f"the header has {len(layout.groups):,} group/ columns; at most {MAX_GROUP_COLUMNS:,} "
            "are supported in one file (split the groups over several files)",
        )
    if rules.strict_headers and layout.warnings:
        raise FileRejected("invalid_header", layout.warnings[0].message + " (strict_headers)")
    return layout


def _mapped(
    layout: Layout, index: int, name: str, mapping: Mapping | None, seen: dict[str, int]
) -> str | None:
    """Our column for one of theirs (None: not mapped; _HANDLED: a group source or ignored)."""
    if mapping is None or mapping.is_empty:
        return None
    folded = fold(name)
    if folded in mapping.ignore:
        return _HANDLED
    if folded in mapping.groups_from:
        _check_duplicate(f"from:{folded}", index, name, layout.names, seen, mapping.key)
        layout.sources.append((index, folded))
        return _HANDLED
    return mapping.columns.get(folded)


def _place(
    layout: Layout, index: int, name: str, rules: HeaderRules, seen: dict[str, int], target: str | None
) -> None:
    canonical = target if target is not None else visible(name)
    lower = canonical.lower()
    if lower in RESULT_COLUMNS and target is None:
        if lower == "row":
            layout.row = index
        return  # a results file uploaded again: its bookkeeping columns are ignored
    key = _identity(lower, rules)
    if key is None:
        hint = f" (map it in {_sub(rules.key, 'columns')} or list it in ignore_columns)" if rules.key else ""
        layout.warnings.append(
            Issue(
                "warning",
                "unknown_column",
                f"column {index + 1} {name!r} is not a roster column; ignored{hint}"
                f"{non_ascii_hint(canonical)}",
            )
        )
        return
    if target is not None:
        layout.renamed.add(index)
    renamed = target is not None or seen.get(key, -1) in layout.renamed
    _check_duplicate(key, index, name, layout.names, seen, (rules.key or "[tenants]") if renamed else None)
    if target is None and canonical != name:
        layout.warnings.append(_invisible(index, name, canonical))
    if target is None:
        _check_case(layout, canonical, lower)
    layout.columns[index] = ACTIVE if lower == ACTIVE else key
    _assign(layout, index, key, canonical, rules)


def _invisible(index: int, given: str, name: str) -> Issue:
    ch = next(ch for ch in given if unicodedata.category(ch) == "Cf")
    label = unicodedata.name(ch, "a format character")
    return Issue(
        "warning",
        "invisible_characters",
        f"column {index + 1} {given!r} holds invisible characters (U+{ord(ch):04X} {label}); "
        f"matched as {name!r}",
    )


def visible(name: str) -> str:
    """The name without invisible format characters (zero-width spaces and joiners, direction
    marks, soft hyphens, BOMs), which spreadsheets and copy-paste slip into header cells."""
    if name.isascii():
        return name
    return "".join(ch for ch in name if unicodedata.category(ch) != "Cf").strip()


def non_ascii_hint(name: str) -> str:
    """For a name that did not match: the first character that is not plain ASCII, by its
    Unicode name, since look-alikes (Cyrillic а, fullwidth letters) read as the real column."""
    for position, ch in enumerate(name, 1):
        if not ch.isascii():
            label = unicodedata.name(ch, f"U+{ord(ch):04X}")
            return (
                f" (character {position} is {ch!r}, U+{ord(ch):04X} {label}, not plain ASCII; "
                "roster column names are ASCII)"
            )
    return ""


def _sub(key: str, table: str) -> str:
    """``[tenants.acme]`` -> ``[tenants.acme.columns]``."""
    return key[:-1] + "." + table + "]" if key.endswith("]") else f"{key} {table}"


def _identity(lower: str, rules: HeaderRules) -> str | None:
    """The column's canonical meaning (aliases folded), or None for an unknown column."""
    if lower in (EMAIL, EMAIL_ALIAS):
        return EMAIL
    if lower in TEXT_COLUMNS:
        return lower
    if lower == ACTIVE:
        # `active` is the default license's status column written another way.
        return f"{rules.default_license}{STATUS_SUFFIX}" if rules.default_license else ACTIVE
    if lower.startswith(GROUP_PREFIX):
        return GROUP_PREFIX + lower[len(GROUP_PREFIX) :].strip()
    if lower.endswith(STATUS_SUFFIX):
        return lower
    return None


def _check_duplicate(
    key: str, index: int, name: str, names: list[str], seen: dict[str, int], mapped_by: str | None = None
) -> None:
    if key in seen:
        first = seen[key]
        if mapped_by is not None:
            meaning = key.removeprefix("from:")
            raise FileRejected(
                "duplicate_header",
                f"column {index + 1} {name!r} and column {first + 1} {names[first]!r} both become "
                f"{meaning!r} after {_sub(mapped_by, 'columns')}; each column may appear once: map one "
                "of them, or list the other in ignore_columns",
            )
        raise FileRejected(
            "duplicate_header",
            f"column {index + 1} {name!r} repeats column {first + 1} {names[first]!r}; "
            "each column may appear once (case and aliases do not make a new column)",
        )
    seen[key] = index


def _check_case(layout: Layout, name: str, lower: str) -> None:
    canonical = lower if not lower.startswith(GROUP_PREFIX) else GROUP_PREFIX + name[len(GROUP_PREFIX) :]
    if name != canonical:
        layout.warnings.append(
            Issue(
                "warning",
                "header_case",
                f"column {name!r} was matched to {canonical!r} by ignoring case",
            )
        )


def _assign(layout: Layout, index: int, key: str, name: str, rules: HeaderRules) -> None:
    lower = name.lower()
    if key == EMAIL:
        layout.email = index
    elif key in TEXT_COLUMNS:
        layout.text[key] = index
    elif lower.startswith(GROUP_PREFIX):
        layout.groups.append((index, _group_name(index, name)))
    elif lower == ACTIVE:
        _require_default_license(rules)
        layout.active = index
    else:
        layout.statuses.append((index, _license_of(lower, rules)))


def _group_name(index: int, name: str) -> str:
    group = name[len(GROUP_PREFIX) :].strip()
    if not group:
        raise FileRejected(
            "invalid_header", f"column {index + 1} {name!r} is a group column with no group name"
        )
    return group


def _license_of(lower: str, rules: HeaderRules) -> str:
    license_type = lower[: -len(STATUS_SUFFIX)]
    if license_type not in rules.license_types:
        known = ", ".join(f"{t}{STATUS_SUFFIX}" for t in rules.license_types) or "none"
        raise FileRejected(
            "unknown_license",
            f"column {lower!r} names license type {license_type!r}, which this tenant does not have; "
            f"this tenant's license columns are: {known}",
        )
    return license_type


def _require_default_license(rules: HeaderRules) -> None:
    if rules.default_license is None:
        raise FileRejected(
            "unknown_license",
            "column 'active' sets the tenant's default license, but this tenant has none configured",
        )


def _other_delimiter(cell: str, rules: HeaderRules) -> FileRejected | None:
    other = [d for d in _DELIMITER_NAMES if d != rules.delimiter and d in cell]
    if not other:
        return None
    sep, ours = _DELIMITER_NAMES[other[0]], _DELIMITER_NAMES.get(rules.delimiter, rules.delimiter)
    shown = other[0].replace("\t", "\\t")
    table = rules.key or "the tenant's configuration"
    return FileRejected(
        "malformed_csv",
        f"the header looks {sep}-separated, but this tenant's files are read as {ours}-separated: "
        f'set delimiter = "{shown}" (or "auto") in {table}, or export the roster as CSV '
        "with commas (CSV UTF-8)",
    )


def _missing_email(names: list[str], rules: HeaderRules) -> FileRejected:
    hint = ""
    if rules.key:
        hint = (
            f"; if the file calls it something else, map it in {_sub(rules.key, 'columns')}, "
            f'e.g. "Work Email" = "{EMAIL}"'
        )
    return FileRejected(
        "missing_required_column",
        f"the required column {EMAIL!r} (or {EMAIL_ALIAS!r}) is missing from the header; "
        f"the header has: {', '.join(repr(n) for n in names)}{hint}"
        f"{''.join(non_ascii_hint(n) for n in [n for n in names if not n.isascii()][:3])}",
    )
