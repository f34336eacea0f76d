"""A one-line progress display for `syncd reconcile` on a terminal; silent anywhere else.

The engine names the stage it is in and gives a function that describes the work done so far;
a small thread redraws the line a few times a second, so the hot loops never print.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Shows `stage: detail` on one terminal line, redrawn every `interval` seconds."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.2) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._stage = ""
        self._detail: Callable[[], str] = lambda: ""
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    def stage(self, name: str, detail: Callable[[], str] | str = "") -> None:
        """Enter a stage; `detail` is text, or a function called at each redraw."""
        with self._lock:
            self._stage = name
            self._detail = detail if callable(detail) else (lambda: detail)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="syncd-progress", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop redrawing and clear the line, so the summary starts on a clean one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            stage, detail = self._stage, self._detail
        try:
            text = f"{stage}: {detail()}" if stage else ""
        except Exception:  # a counter read mid-update must not kill the display
            return
        line = f"[{time.monotonic() - self._started:6.1f}s] {text}"
        pad = max(0, self._width - len(line))
        self._stream.write("\r" + line + " " * pad)
        self._stream.flush()
        self._width = len(line)


class NoProgress:
    """The display used off a terminal (and by the daemon): does nothing."""

    def stage(self, name: str, detail: Callable[[], str] | str = "") -> None:
        """Ignore the stage."""

    def close(self) -> None:
        """Nothing to clear."""


def progress_for(stream: TextIO | None = None) -> Progress | NoProgress:
    """A live display when `stream` (default stderr) is a terminal, else a silent one."""
    stream = stream if stream is not None else sys.stderr
    return Progress(stream) if stream.isatty() else NoProgress()
