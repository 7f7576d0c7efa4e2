"""Progress of a long step on stderr, for commands whose work is one opaque call (a simulation, a VM boot).

On a terminal a rich spinner shows the step, its number and the elapsed time; in a log (stderr not a terminal)
the step gets a line when it starts, a line every :data:`HEARTBEAT` seconds while it runs, and one when it ends,
so a CI log shows where the time goes.  stdout is never touched (``--json`` stays machine-readable).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Seconds between "still running" lines in a log.
HEARTBEAT = 30.0


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


class Steps:
    """Numbered steps of one command: ``with steps.step("simulating ..."):``."""

    def __init__(self, command: str, total: int) -> None:
        from rich.console import Console

        self.command = command
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.console = Console(stderr=True)

    def _prefix(self) -> str:
        return f"{self.command}: step {self.done + 1} of {self.total}"

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        label = f"{self._prefix()}, {what}"
        t0 = time.monotonic()
        stop = threading.Event()
        if self.console.is_terminal:
            status = self.console.status(label, spinner="dots")
            status.start()

            def tick() -> None:
                while not stop.wait(1.0):
                    status.update(f"{label} [{_clock(time.monotonic() - t0)}]")

        else:
            status = None
            self.console.print(f"{label} ...", highlight=False, soft_wrap=True)

            def tick() -> None:
                while not stop.wait(HEARTBEAT):
                    self.console.print(
                        f"{label}: still running [{_clock(time.monotonic() - t0)}]", highlight=False, soft_wrap=True
                    )

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        outcome = "failed"
        try:
            yield
            outcome = "done"
        finally:
            stop.set()
            ticker.join()
            if status is not None:
                status.stop()
            self.done += 1
            self.console.print(
                f"{label}: {outcome} in {_clock(time.monotonic() - t0)} "
                f"(total {_clock(time.monotonic() - self.started)})",
                highlight=False,
                soft_wrap=True,
            )
