"""Email syntax: a fast path for the plain addresses that make up nearly every roster, and
``email_validator`` for everything else (it is ~20 us per call, too slow for a million rows alone).

The fast path accepts a strict subset of what ``email_validator`` accepts; a property test holds
that line, so both paths always agree.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from email_validator import SPECIAL_USE_DOMAIN_NAMES as _SPECIAL
from email_validator import EmailNotValidError, validate_email

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]++"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SPECIAL_TLDS = "|".join(sorted(_SPECIAL))  # all single labels
# One match does every check: local part at most 64 characters, no "--" in the domain (it can mean
# punycode or a reserved IDNA label), and not a special-use domain. Those are all left to
# email_validator. Possessive quantifiers: nothing here needs backtracking.
_FAST = re.compile(
    rf"(?=[^@]{{1,64}}@){_ATOM}(?:\.{_ATOM})*+@(?!.*--)(?:{_LABEL}\.)++(?!(?:{_SPECIAL_TLDS})\Z)[a-z]{{2,63}}"
)
_MAX_TOTAL = 254


def normalize_email(value: str) -> str | None:
    """The address lower-cased for storage and comparison, or None when it is not valid."""
    lowered = value.lower()
    if len(lowered) <= _MAX_TOTAL and _FAST.fullmatch(lowered):
        return lowered
    return _slow(value)


def _fast_ok(lowered: str) -> bool:
    return len(lowered) <= _MAX_TOTAL and _FAST.fullmatch(lowered) is not None


@lru_cache(maxsize=1024)
def _slow(value: str) -> str | None:
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return None
    normalized = result.normalized.lower()
    if not normalized.isascii() and _look_alike(normalized):
        return None
    return normalized


# Scripts whose letters pass for one another: a part mixing two of them is how a look-alike
# address is made (jоhn@ with a Cyrillic о is another mailbox than john@). One script, any of them,
# is fine (иван@пример.рф), and so is mixing with scripts that do not imitate Latin (tanaka太郎@).
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC"})


def _look_alike(address: str) -> str | None:
    """Why the address is a look-alike of another, or None: a fullwidth or other compatibility
    form of an ASCII character, or one part (local part, domain label) mixing confusable scripts."""
    for ch in address:
        if not ch.isascii():
            folded = unicodedata.normalize("NFKC", ch)
            if folded != ch and folded.isascii():
                return f"{_describe(ch)} is a look-alike of {folded!r}"
    local, _, domain = address.rpartition("@")
    for part in (local, *domain.split(".")):
        scripts: dict[str, str] = {}
        for ch in part:
            script = unicodedata.name(ch, "").split(" ", 1)[0]
            if ch.isalpha() and script in _CONFUSABLE_SCRIPTS:
                scripts.setdefault(script, ch)
        if len(scripts) > 1:
            odd = next(ch for script, ch in scripts.items() if script != "LATIN")
            mixed = " and ".join(name.title() for name in sorted(scripts))
            return f"it mixes {mixed} letters ({_describe(odd)}), as look-alike addresses do"
    return None


def _describe(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')})"


def email_problem(value: str) -> str | None:
    """Why ``normalize_email`` refused an address, when there is more to say than 'invalid'."""
    for ch in value:
        if not ch.isascii() and unicodedata.category(ch) == "Cf":
            return f"it holds an invisible character, {_describe(ch)}"
    folded = unicodedata.normalize("NFKC", value)
    if folded != value and _fast_ok(folded.lower()):
        ch = next(c for c in value if unicodedata.normalize("NFKC", c) != c)
        return f"{_describe(ch)} stands where {unicodedata.normalize('NFKC', ch)!r} is meant"
    if not value.isascii():
        try:
            normalized = validate_email(value, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            return None
        return _look_alike(normalized)
    return None
