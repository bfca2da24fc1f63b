"""Terminal output of the demo: headings, bars, a live progress line and a table.

On a terminal the progress line is rewritten in place (``\\r`` and an ANSI erase);
anywhere else (CI logs, ``| cat``) progress is skipped and only finished lines are
printed, each flushed at once so the output still arrives as the demo runs.
Colour needs a terminal and is off with ``--no-color`` or ``NO_COLOR`` set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TextIO

_RESET = "\x1b[0m"
_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34",
          "magenta": "35", "cyan": "36"}
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(stream.encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return False
    return True


class Display:
    """Where the demo writes: one stream, live or not, coloured or not."""

    def __init__(self, stream: TextIO, *, color: bool | None = None,
                 live: bool | None = None) -> None:
        self.stream = stream
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.live = tty if live is None else live
        if color is None:
            color = tty and "NO_COLOR" not in os.environ
        self.color = color
        self.unicode = _can_encode(stream, _EIGHTHS + "─★☆→\u00d7")
        self._progress_shown = False
        self._last_progress = 0.0

    # -- styles ------------------------------------------------------------------------

    def style(self, text: str, *names: str) -> str:
        if not self.color or not names:
            return text
        return "\x1b[" + ";".join(_CODES[n] for n in names) + "m" + text + _RESET

    def glyph(self, fancy: str, plain: str) -> str:
        return fancy if self.unicode else plain

    @property
    def times(self) -> str:
        """The multiplication sign, or ``x``."""
        return self.glyph("\u00d7", "x")

    def verdict(self, passed: bool) -> str:
        return self.style("PASS", "bold", "green") if passed else self.style("FAIL", "bold", "red")

    # -- writing -----------------------------------------------------------------------

    def _clear_progress(self) -> None:
        if self._progress_shown:
            self.stream.write("\r\x1b[2K")
            self._progress_shown = False

    def line(self, text: str = "") -> None:
        """A permanent line (replaces the progress line if one is shown)."""
        self._clear_progress()
        self.stream.write(text + "\n")
        self.stream.flush()

    def progress(self, text: str, *, force: bool = False) -> None:
        """Rewrite the live line (terminals only; at most ~12 times a second)."""
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < 0.08:
            return
        self._last_progress = now
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._progress_shown = True

    def done(self) -> None:
        """Remove the live line, if any."""
        self._clear_progress()
        self.stream.flush()

    def heading(self, text: str) -> None:
        rule = self.glyph("─", "-")
        self.line()
        self.line(self.style(f"{rule * 2} {text} ", "bold", "cyan")
                  + self.style(rule * max(4, 76 - len(text)), "dim"))

    # -- pictures ----------------------------------------------------------------------

    def bar(self, fraction: float, width: int = 32) -> str:
        """A horizontal bar ``width`` cells wide, filled to ``fraction``."""
        fraction = min(max(fraction, 0.0), 1.0)
        if not self.unicode:
            full = round(fraction * width)
            return "#" * full + "." * (width - full)
        eighths = round(fraction * width * 8)
        full, part = divmod(eighths, 8)
        text = "█" * full + (_EIGHTHS[part] if part else "")
        return text + " " * (width - len(text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]],
              plain_rows: Sequence[Sequence[str]] | None = None) -> None:
        """Aligned columns; ``plain_rows`` are the rows without colour codes (for widths)."""
        plain = plain_rows if plain_rows is not None else rows
        widths = [max(len(h), *(len(r[i]) for r in plain)) for i, h in enumerate(header)]
        self.line("  " + "  ".join(self.style(h.ljust(w), "bold")
                                   for h, w in zip(header, widths, strict=True)))
        self.line("  " + "  ".join(self.glyph("─", "-") * w for w in widths))
        for row, bare in zip(rows, plain, strict=True):
            cells = [cell + " " * (w - len(b)) for cell, b, w in zip(row, bare, widths,
                                                                    strict=True)]
            self.line("  " + "  ".join(cells).rstrip())
