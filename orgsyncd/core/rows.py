"""Row validation: one input record -> one staged tuple, or a ``Rejected`` row with its error code.

The tuple is what the store bulk-loads into its staging table (see ``STAGE_FIXED`` for the order);
checks that need other rows or the database (duplicates, email_taken, no_seats) happen there.
Hot path: a million calls per big file, so it stays flat and allocation-light. Valid rows carry no
error columns and say "no licence turned off" with "" rather than None, because the bulk insert
binds every None through a slow adapter lookup.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Mapping as Lookup
from dataclasses import dataclass
from typing import NamedTuple

from orgsyncd.core.emails import email_problem, normalize_email
from orgsyncd.core.formats import Mapping
from orgsyncd.core.header import ACTIVE, FIRST, LAST, TITLE, UID, Layout
from orgsyncd.core.reader import Record

# A valid row: these, then one flag per group, then per groups_from column its group's name and
# name key (both None for no group). lic_off is "|a|b|" or "".
STAGE_FIXED = ("line", "uid", "email", "first", "last", "title", "lic_on", "lic_off", "fp")
MAX_EMAIL = 320
MAX_VALUE = 255
_FORMULA_START = frozenset("=+-@\t\r")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_BAD = object()

StagedRow = tuple[object, ...]


class Rejected(NamedTuple):
    """A row with a row error. Its identity (uid, else email) still goes in, so a full import
    does not deactivate a learner over a typo."""

    line: int
    err: str
    msg: str
    uid: str | None
    email: str | None


def _picker(indexes: list[int]) -> Callable[[Sequence[str]], Sequence[str]]:
    """Fetch several cells in one C call (itemgetter returns a bare value for one index)."""
    if not indexes:
        return lambda _fields: ()
    if len(indexes) == 1:
        only = indexes[0]
        return lambda fields: (fields[only],)
    return operator.itemgetter(*indexes)


def clean(value: str) -> str:
    """Trim, and undo the formula-escaping quote our own exports add."""
    value = value.strip()
    if len(value) > 1 and value[0] == "'" and value[1] in _FORMULA_START:
        return value[1:].lstrip()
    return value


class RowError(Exception):
    """A row-level problem: becomes the row's result line, never escapes the validator."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RowRules:
    blank_means: str  # "unchanged" | "clear" | "error"
    default_license: str | None


class RowValidator:
    """Validates records of one file. Lookups are prepared once per file so the per-row path is a
    few dict lookups and string methods."""

    def __init__(
        self, layout: Layout, rules: RowRules, seed: int = 0, mapping: Mapping | None = None
    ) -> None:
        self.width = layout.width
        self.names = layout.names
        self.columns = layout.columns
        self.email_at = layout.email
        self.text_ats = [layout.text.get(col, -1) for col in (UID, FIRST, LAST, TITLE)]
        self.uid_at = self.text_ats[0]
        self.statuses = layout.statuses
        self.active_at = layout.active
        self.default_license = rules.default_license
        self.groups = [index for index, _ in layout.groups]
        self.group_cells = _picker(self.groups)
        self.blank = rules.blank_means
        self.seed = seed & 0xFFFFFFFF
        blank: object = {"unchanged": None, "clear": "", "error": _BAD}[rules.blank_means]
        self.blank_text = blank
        self.status_map = {
            "active": True,
            "inactive": False,
            "": None if blank is not _BAD else _BAD,
        }
        self.flag_map: dict[str, object] = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}
        self.flag_map[""] = None if blank is not _BAD else _BAD
        group_blank = {"unchanged": None, "clear": 0, "error": _BAD}[rules.blank_means]
        self.group_map: dict[str, object] = {"1": 1, "0": 0, "": group_blank}
        self.mapping = mapping or Mapping()
        self._translate(layout)
        self.exact_group = {k: v for k, v in self.group_map.items() if v is not _BAD}.__getitem__
        self.sources = [at for at, _ in layout.sources]
        self.source_cells = _picker(self.sources)

    def _translate(self, layout: Layout) -> None:
        """Fold the tenant's value translations into the lookup tables, so a mapped value costs
        the same single dict lookup as one of ours."""
        self.status_maps = {at: self.status_map for at, _ in self.statuses}
        self.active_map = self.flag_map
        self.text_maps: dict[int, dict[str, str]] = {}
        if not self.mapping.values:
            return
        for at, column in layout.columns.items():
            table = self.mapping.values_for(column)
            if table is None:
                continue
            if column == ACTIVE:
                self.active_map = _extended(self.flag_map, table)
            elif column.endswith("_status"):
                self.status_maps[at] = _extended(self.status_map, table)
            elif column.startswith("group/"):
                self.group_map = _extended(self.group_map, table, keep_case=True)  # group/* only
            elif column in (FIRST, LAST, TITLE):
                self.text_maps[at] = dict(table)

    def validate(self, line: int, fields: Sequence[str]) -> StagedRow | Rejected:
        if len(fields) != self.width:
            return Rejected(line, "field_count", self._count_message(len(fields)), None, None)
        try:
            email = self._email(fields[self.email_at])
            uid, first, last, title = self._texts(fields)
            lic_on, lic_off = self._licenses(fields)
            groups = self._group_flags(fields)
            if self.sources:
                groups += self._source_groups(fields)
        except RowError as exc:
            return self._failed(line, fields, exc)
        fp = self.fingerprint(fields)
        return (line, uid or None, email, first, last, title, lic_on, lic_off, fp, *groups)

    def _source_groups(self, fields: Sequence[str]) -> list[object]:
        """Per groups_from column, the group the cell names: its names, then their keys."""
        names: list[str | None] = []
        for at, value in zip(self.sources, self.source_cells(fields), strict=True):
            value = clean(value)
            if not value and self.blank_text is _BAD:
                raise self._blank_error(at)
            if len(value) > MAX_VALUE:
                raise RowError("value_too_long", self._too_long(at, len(value), MAX_VALUE))
            names.append(value or None)
        return [*names, *(name.casefold() if name else None for name in names)]

    def _group_flags(self, fields: Sequence[str]) -> list[object]:
        try:  # cells exactly "1", "0" or an allowed blank: one C-level pass
            return list(map(self.exact_group, self.group_cells(fields)))
        except KeyError:  # padded with spaces, another case of a mapped value, or not a flag at all
            flag = self.group_map.get
            flags = [flag(value.strip().lower(), _BAD) for value in self.group_cells(fields)]
            if _BAD in flags:
                self._group_problem(fields)
            return flags

    def fingerprint(self, fields: Sequence[str]) -> int:
        """A 64-bit digest of the raw record (seeded with the file's header and the tenant's rules):
        a learner whose stored fingerprint matches was last set by this very row, so it is unchanged."""
        data = "\x1f".join(fields).encode("utf-8", "surrogatepass")
        value = (zlib.crc32(data, self.seed) << 32) | zlib.adler32(data, 1)
        return value - (1 << 64) if value >= (1 << 63) else value

    def _failed(self, line: int, fields: Sequence[str], exc: RowError) -> Rejected:
        uid = clean(fields[self.uid_at]) if self.uid_at >= 0 else ""
        if uid:
            return Rejected(line, exc.code, exc.message, uid, None)
        raw = clean(fields[self.email_at])
        return Rejected(line, exc.code, exc.message, None, (normalize_email(raw) if raw else None) or None)

    def _count_message(self, got: int) -> str:
        return f"the row has {got} field{'s' if got != 1 else ''}, the header has {self.width}"

    def _email(self, raw: str) -> str:
        raw = clean(raw)
        if not raw:
            raise RowError("missing_email", f"{self.names[self.email_at]} is empty")
        if len(raw) > MAX_EMAIL:
            raise RowError("value_too_long", self._too_long(self.email_at, len(raw), MAX_EMAIL))
        email = normalize_email(raw)
        if email is None:
            column = self.names[self.email_at]
            problem = email_problem(raw)
            why = f": {problem}" if problem else ""
            raise RowError("invalid_email", f"{column} {raw!r} is not a valid email address{why}")
        return email

    def _texts(self, fields: Sequence[str]) -> list[str | None]:
        """uid, first, last, title: the hot loop of ``_text`` without a call per cell."""
        values: list[str | None] = []
        for at in self.text_ats:
            if at < 0:
                values.append(None)
                continue
            value = fields[at].strip()
            if not value or len(value) > MAX_VALUE or value[0] == "'":
                values.append(self._text(fields, at))  # the rare cases, with their errors
            else:
                values.append(value)
        if self.text_maps:
            for i, at in enumerate(self.text_ats):
                table = self.text_maps.get(at)
                if table is not None and values[i]:
                    values[i] = table.get(values[i].lower(), values[i])  # type: ignore[union-attr]
        return values

    def _text(self, fields: Sequence[str], at: int) -> str | None:
        if at < 0:
            return None
        value = fields[at].strip()
        if not value:
            if self.blank_text is _BAD:
                raise self._blank_error(at)
            return self.blank_text  # type: ignore[return-value]
        if value[0] == "'" and len(value) > 1 and value[1] in _FORMULA_START:
            value = value[1:].lstrip()
        if len(value) > MAX_VALUE:
            raise RowError("value_too_long", self._too_long(at, len(value), MAX_VALUE))
        return value

    def _blank_error(self, at: int) -> RowError:
        return RowError("blank_value", f"{self.names[at]} is empty and this tenant requires a value")

    def _too_long(self, at: int, length: int, limit: int) -> str:
        return f"{self.names[at]} is {length} characters long; the limit is {limit}"

    def _licenses(self, fields: Sequence[str]) -> tuple[str | None, str | None]:
        on: list[str] = []
        off: list[str] = []
        for at, license_type in self.statuses:
            state = self.status_maps[at].get(fields[at].strip().lower(), _BAD)
            if state is _BAD:
                raise self._value_problem(fields, at, "use active or inactive")
            if state is not None:
                (on if state else off).append(license_type)
        if self.active_at >= 0 and self.default_license:
            state = self.active_map.get(fields[self.active_at].strip().lower(), _BAD)
            if state is _BAD:
                raise self._value_problem(fields, self.active_at, "use TRUE or FALSE (yes/no, 1/0)")
            if state is not None:
                (on if state else off).append(self.default_license)
        if len(on) > 1:
            raise RowError(
                "multiple_active_licenses",
                f"{len(on)} licenses are active in this row ({', '.join(on)}); a learner holds one",
            )
        return (on[0] if on else None), ("|" + "|".join(off) + "|" if off else "")

    def _value_problem(self, fields: Sequence[str], at: int, hint: str) -> RowError:
        value = fields[at].strip()
        if not value:
            return self._blank_error(at)
        column = self.columns.get(at, "")
        theirs = self.mapping.accepted(column)
        if theirs:
            listed = ", ".join(repr(v) for v in theirs)
            hint += f", or one of this tenant's values: {listed} ({self.mapping.key[:-1]}.values] {column})"
        return RowError("invalid_value", f"{self.names[at]} is {value!r}; {hint}")

    def _group_problem(self, fields: Sequence[str]) -> None:
        for at in self.groups:
            if self.group_map.get(fields[at].strip().lower(), _BAD) is _BAD:
                raise self._value_problem(fields, at, "use 1 (member) or 0 (not a member)")


def _extended(
    base: Lookup[str, object], table: Lookup[str, str], keep_case: bool = False
) -> dict[str, object]:
    """``base`` plus their values (folded) meaning what our value means; with ``keep_case`` also
    as written, for the exact-match fast path of the group flags."""
    extended = dict(base)
    for theirs, ours in table.items():
        meaning = base.get(ours.strip().lower(), _BAD)
        extended[theirs] = meaning
        if keep_case:
            extended[theirs.upper()] = extended[theirs.capitalize()] = meaning
    return extended


def roster_rows(records: Iterator[Record], layout: Layout) -> Iterator[Record]:
    """The records that are roster rows: a results file uploaded again also carries our own
    row-0 lines (file warnings and errors), which are not."""
    at = layout.row
    if at < 0:
        return records
    return (rec for rec in records if not (len(rec[1]) > at and rec[1][at].strip() == "0"))
