"""Progress bars for the demo's long loops: tqdm when installed, a small built-in bar otherwise.

Both are off when stdout is not a terminal (a log file or a pipe gets the summary lines only).
"""

from __future__ import annotations

import sys
import time
from typing import Any


class _TextBar:
    """A one-line ``desc [#####.....] i/n  postfix`` bar redrawn in place with ``\\r``."""

    width = 24

    def __init__(self, total: int, desc: str, stream: Any) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.stream = stream
        self.count = 0
        self.postfix = ""
        self._last_draw = 0.0
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_draw < 0.1:  # redraw at most ten times a second
            return
        self._last_draw = now
        done = int(self.width * min(self.count, self.total) / self.total)
        bar = "#" * done + "." * (self.width - done)
        self.stream.write(f"\r  {self.desc} [{bar}] {self.count}/{self.total} {self.postfix}"
                          "\x1b[K")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.count += n
        self._draw(force=self.count >= self.total)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        self._draw()

    def close(self) -> None:
        self.stream.write("\r\x1b[K")  # the bar disappears; the summary line takes its place
        self.stream.flush()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, *, enabled: bool | None = None) -> Any:
    """A bar with ``update(n)``, ``set_postfix_str(text)`` and ``close()``.

    ``enabled=None``: on exactly when stdout is a terminal. tqdm draws it when installed
    (``pip install fastopt[progress]``); otherwise the built-in text bar does.
    """
    stream = sys.stdout
    if enabled is None:
        enabled = bool(getattr(stream, "isatty", lambda: False)())
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(total, desc, stream)
    return tqdm(total=total, desc="  " + desc, leave=False, file=stream, dynamic_ncols=True)
