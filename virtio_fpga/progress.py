"""Progress of long commands on stderr (rich), so that stdout stays clean for ``--json``.

On a terminal: a live spinner line with the current step and the elapsed time.  Elsewhere (a log, CI, a pipe):
one plain line whenever the step changes, plus a heartbeat line every ``heartbeat`` seconds, so a log shows
that the command is alive and what it is doing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from rich.console import Console


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class StepReporter:
    """``with StepReporter("synth") as r: r.update("yosys ...")``; ``watch(fn)`` polls ``fn() -> str`` meanwhile."""

    def __init__(self, title: str, *, console: Console | None = None, heartbeat: float = 30.0) -> None:
        self.title = title
        self.console = console or Console(stderr=True)
        self.heartbeat = heartbeat
        self.t0 = time.monotonic()
        self._text = ""
        self._last_line = 0.0
        self._status = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __enter__(self) -> StepReporter:
        if self.console.is_terminal:
            self._status = self.console.status(self._render())
            self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._status is not None:
            self._status.__exit__(*exc)
        self.console.print(f"{self.title}: finished after {_clock(self.elapsed)}")

    def _render(self) -> str:
        return f"{self.title} [{_clock(self.elapsed)}] {self._text}"

    def update(self, text: str) -> None:
        with self._lock:
            changed = text != self._text
            self._text = text
            if self._status is not None:
                self._status.update(self._render())
            elif changed or time.monotonic() - self._last_line >= self.heartbeat:
                self.console.print(self._render(), highlight=False)
                self._last_line = time.monotonic()

    def watch(self, step: Callable[[], str], interval: float = 0.5) -> None:
        """Call ``step`` every ``interval`` seconds in a thread and show what it returns."""

        def loop() -> None:
            while not self._stop.wait(interval):
                with contextlib.suppress(OSError):  # a work directory being rewritten: try again next time
                    self.update(step())

        self._thread = threading.Thread(target=loop, name=f"{self.title}-progress", daemon=True)
        self._thread.start()
