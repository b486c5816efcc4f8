"""Row validation: one input record -> one staged tuple, with a row error code when it is invalid.

The tuple is what the store bulk-loads into its staging table (see ``STAGE_FIXED`` for the order);
checks that need other rows or the database (duplicates, email_taken, no_seats) happen there.
Hot path: a million calls per big file, so it stays flat and allocation-light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orgsyncd.core.emails import normalize_email
from orgsyncd.core.header import FIRST, LAST, TITLE, UID, Layout

# line, err, msg, ukey, uid, email, first, last, title, lic_on, lic_off, then one flag per group
STAGE_FIXED = (
    "line",
    "err",
    "msg",
    "ukey",
    "uid",
    "email",
    "first",
    "last",
    "title",
    "lic_on",
    "lic_off",
)
MAX_EMAIL = 320
MAX_VALUE = 255
_FORMULA_START = frozenset("=+-@\t\r")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_STATUS = {"active": True, "inactive": False}
_GROUP = {"1": 1, "0": 0}

StagedRow = tuple[object, ...]


def clean(value: str) -> str:
    """Trim, and undo the formula-escaping quote our own exports add."""
    value = value.strip()
    if len(value) > 1 and value[0] == "'" and value[1] in _FORMULA_START:
        return value[1:]
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
    def __init__(self, layout: Layout, rules: RowRules) -> None:
        self.width = layout.width
        self.names = layout.names
        self.email_at = layout.email
        self.text_at = [layout.text.get(col, -1) for col in (UID, FIRST, LAST, TITLE)]
        self.statuses = layout.statuses
        self.active_at = layout.active
        self.default_license = rules.default_license
        self.groups = [index for index, _ in layout.groups]
        self.blank = rules.blank_means
        self.empty_groups: tuple[None, ...] = (None,) * len(self.groups)

    def validate(self, line: int, fields: Sequence[str]) -> StagedRow:
        if len(fields) != self.width:
            return self._failed(line, None, "field_count", self._count_message(len(fields)))
        values = [clean(v) for v in fields]
        key: str | None = None
        try:
            email, key = self._email(values)
            uid, first, last, title = (self._text(values, at) for at in self.text_at)
            if uid:
                key = "u:" + uid
            lic_on, lic_off = self._licenses(values)
            groups = self._groups(values)
        except RowError as exc:
            return self._failed(line, key or self._fallback_key(values), exc.code, exc.message)
        return (
            line,
            None,
            None,
            key,
            uid or None,
            email,
            first,
            last,
            title,
            lic_on,
            lic_off,
            *groups,
        )

    def _failed(self, line: int, key: str | None, code: str, message: str) -> StagedRow:
        # The identity still goes in, so the row counts as present in a full import.
        uid = key[2:] if key and key[0] == "u" else None
        email = key[2:] if key and key[0] == "e" else None
        return (
            line,
            code,
            message,
            key,
            uid,
            email,
            None,
            None,
            None,
            None,
            None,
            *self.empty_groups,
        )

    def _count_message(self, got: int) -> str:
        return f"the row has {got} field{'s' if got != 1 else ''}, the header has {self.width}"

    def _email(self, values: list[str]) -> tuple[str, str]:
        raw = values[self.email_at]
        if not raw:
            raise RowError("missing_email", f"{self.names[self.email_at]} is empty")
        if len(raw) > MAX_EMAIL:
            raise RowError("value_too_long", self._too_long(self.email_at, len(raw), MAX_EMAIL))
        email = normalize_email(raw)
        if email is None:
            column = self.names[self.email_at]
            raise RowError("invalid_email", f"{column} {raw!r} is not a valid email address")
        return email, "e:" + email

    def _text(self, values: list[str], at: int) -> str | None:
        if at < 0:
            return None
        value = values[at]
        if not value:
            return self._blank(at, "")
        if len(value) > MAX_VALUE:
            raise RowError("value_too_long", self._too_long(at, len(value), MAX_VALUE))
        return value

    def _blank(self, at: int, cleared: str | None) -> str | None:
        if self.blank == "unchanged":
            return None
        if self.blank == "clear":
            return cleared
        raise RowError("blank_value", f"{self.names[at]} is empty and this tenant requires a value")

    def _too_long(self, at: int, length: int, limit: int) -> str:
        return f"{self.names[at]} is {length} characters long; the limit is {limit}"

    def _licenses(self, values: list[str]) -> tuple[str | None, str | None]:
        on: list[str] = []
        off: list[str] = []
        for at, license_type in self.statuses:
            state = self._status(values, at)
            if state is not None:
                (on if state else off).append(license_type)
        if self.active_at >= 0 and self.default_license:
            state = self._flag(values, self.active_at)
            if state is not None:
                (on if state else off).append(self.default_license)
        if len(on) > 1:
            raise RowError(
                "multiple_active_licenses",
                f"{len(on)} licenses are active in this row ({', '.join(on)}); a learner holds one",
            )
        return (on[0] if on else None), ("|" + "|".join(off) + "|" if off else None)

    def _status(self, values: list[str], at: int) -> bool | None:
        value = values[at]
        if not value:
            self._blank(at, None)
            return None
        state = _STATUS.get(value.lower())
        if state is None:
            raise RowError(
                "invalid_value", f"{self.names[at]} is {value!r}; use active or inactive"
            )
        return state

    def _flag(self, values: list[str], at: int) -> bool | None:
        value = values[at]
        if not value:
            self._blank(at, None)
            return None
        lower = value.lower()
        if lower in _TRUE:
            return True
        if lower in _FALSE:
            return False
        raise RowError(
            "invalid_value", f"{self.names[at]} is {value!r}; use TRUE or FALSE (yes/no, 1/0)"
        )

    def _groups(self, values: list[str]) -> list[int | None]:
        flags: list[int | None] = []
        for at in self.groups:
            value = values[at]
            if not value:
                flags.append(0 if self._blank(at, "") == "" else None)
                continue
            flag = _GROUP.get(value)
            if flag is None:
                raise RowError(
                    "invalid_value",
                    f"{self.names[at]} is {value!r}; use 1 (member) or 0 (not a member)",
                )
            flags.append(flag)
        return flags

    def _fallback_key(self, values: list[str]) -> str | None:
        """Identity of an invalid row, so a full import does not deactivate a learner over a typo."""
        uid_at = self.text_at[0]
        if uid_at >= 0 and values[uid_at]:
            return "u:" + values[uid_at]
        email = normalize_email(values[self.email_at]) if values[self.email_at] else None
        return "e:" + email if email else None
