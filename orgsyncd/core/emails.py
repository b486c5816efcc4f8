"""Email syntax: a fast path for the plain addresses that make up nearly every roster, and
``email_validator`` for everything else (it is ~20 us per call, too slow for a million rows alone).

The fast path accepts a strict subset of what ``email_validator`` accepts; a property test holds
that line, so both paths always agree.
"""

from __future__ import annotations

import re
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
    return result.normalized.lower()
