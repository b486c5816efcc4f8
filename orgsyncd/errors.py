"""One exception root. Each error has a stable ``code`` and a message written for the reader.

File-level import problems carry a code from the roster contract; they end up as a row-0 line in
the results file. Everything else ends up as one sentence on stderr (see ``cli.py``).
"""

from __future__ import annotations


class OrgsyncError(Exception):
    """Base of every error orgsyncd reports to a user."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(OrgsyncError):
    """The configuration file or environment is invalid."""

    code = "config_error"
    exit_code = 2


class UsageError(OrgsyncError):
    """The command was called the wrong way (unknown tenant, job in the wrong state...)."""

    code = "usage_error"
    exit_code = 2


class NotFoundError(OrgsyncError):
    """A job, tenant or learner that was asked for does not exist."""

    code = "not_found"
    exit_code = 1


class FileRejected(OrgsyncError):
    """A roster file failed as a whole; nothing of it was applied."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class InjectedFault(OrgsyncError):
    """A fault injected on purpose by a test (ORGSYNCD_FAULT)."""

    code = "injected_fault"


class LeaseLost(OrgsyncError):
    """This instance's claim on a job was taken over (its lease ran out); its attempt is void."""

    code = "lease_lost"
