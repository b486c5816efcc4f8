"""Header analysis: which column means what, and every file-level header problem of the contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orgsyncd.errors import FileRejected

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
    names: list[str] = field(default_factory=list)  # header cells as given, trimmed
    warnings: list[Issue] = field(default_factory=list)

    @property
    def has_license_column(self) -> bool:
        return bool(self.statuses) or self.active >= 0


@dataclass(frozen=True, slots=True)
class HeaderRules:
    license_types: Sequence[str]
    default_license: str | None
    strict_headers: bool = False


def analyse_header(cells: Sequence[str], rules: HeaderRules) -> Layout:
    layout = Layout(width=len(cells))
    seen: dict[str, int] = {}
    for index, raw in enumerate(cells):
        name = raw.replace("\ufeff", "").strip()
        layout.names.append(name)
        _place(layout, index, name, rules, seen)
    if layout.email < 0:
        raise _missing_email(layout.names)
    if rules.strict_headers and layout.warnings:
        raise FileRejected("invalid_header", layout.warnings[0].message + " (strict_headers)")
    return layout


def _place(layout: Layout, index: int, name: str, rules: HeaderRules, seen: dict[str, int]) -> None:
    lower = name.lower()
    if lower in RESULT_COLUMNS:
        if lower == "row":
            layout.row = index
        return  # a results file uploaded again: its bookkeeping columns are ignored
    key = _identity(lower, rules)
    if key is None:
        layout.warnings.append(
            Issue(
                "warning",
                "unknown_column",
                f"column {index + 1} {name!r} is not a roster column; ignored",
            )
        )
        return
    _check_duplicate(key, index, name, layout.names, seen)
    _check_case(layout, name, lower)
    _assign(layout, index, key, name, rules)


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


def _check_duplicate(key: str, index: int, name: str, names: list[str], seen: dict[str, int]) -> None:
    if key in seen:
        first = seen[key]
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


def _missing_email(names: list[str]) -> FileRejected:
    if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
        sep = "semicolon" if ";" in names[0] else "tab"
        return FileRejected(
            "malformed_csv",
            f"the header looks {sep}-separated; orgsyncd reads comma-separated files: "
            "export the roster as CSV with commas (CSV UTF-8)",
        )
    return FileRejected(
        "missing_required_column",
        f"the required column {EMAIL!r} (or {EMAIL_ALIAS!r}) is missing from the header; "
        f"the header has: {', '.join(repr(n) for n in names)}",
    )
