"""A progress bar for the CLI on a terminal (click's), which log lines do not break.

The bar lives on the terminal's last line; while it is shown, each log line first erases it and
then draws it again below (see ``orgsyncd.logging.guarding``). Off a terminal there is no bar.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, TextIO

import click

from orgsyncd.logging import guarding

_ERASE_LINE = "\r\x1b[2K"
_SHOW_CURSOR = "\x1b[?25h"  # click hides it while the bar is drawn


class Bar:
    """``with Bar(total, "importing day1.csv") as bar: bar.to(done)``; ``bar.done()`` fills it,
    ``bar.discard()`` erases it (the work failed and a sentence says why)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.shown = total > 0 and _isatty(self.stream)
        self._bar: Any = click.progressbar(length=max(total, 1), label=label, file=self.stream, width=30)
        self._discarded = False
        self._guard: Any = None

    def __enter__(self) -> Bar:
        if self.shown:
            self._bar.__enter__()
            self._guard = guarding(self)
            self._guard.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.shown:
            return
        self._guard.__exit__(kind, exc, tb)
        if self._discarded or kind is not None:
            self.stream.write(_ERASE_LINE + _SHOW_CURSOR)
            self.stream.flush()
        else:
            self._bar.render_finish()

    def to(self, done: int) -> None:
        """The work has reached *done* of the total (never goes back)."""
        if self.shown and done > self._bar.pos:
            self._bar.update(min(done, self._bar.length) - self._bar.pos)

    def done(self) -> None:
        self.to(self._bar.length)

    def discard(self) -> None:
        self._discarded = True

    # -- the log-line guard ----------------------------------------------------------------------

    def clear(self) -> None:
        self.stream.write(_ERASE_LINE)

    def redraw(self) -> None:
        self._bar._last_line = None  # click draws only a changed line; after a log line it has changed
        self._bar.render_progress()


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
