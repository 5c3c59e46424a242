"""Stopping cleanly: SIGINT and SIGTERM forwarded to the processes a command started (torchrun workers,
local sweep jobs), which are waited for; the command then ends with one line saying what was kept."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator


class Interrupted(RuntimeError):
    """A command stopped on SIGINT or SIGTERM; the message says what was kept and how to go on."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def forwarded(stop: Callable[[int], None]) -> Iterator[list[int]]:
    """While the block runs, SIGINT and SIGTERM call ``stop(signum)`` instead of ending this process; the
    yielded list collects the signals received, so that the block can wait for its children and report.
    The previous handlers are restored afterwards."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        stop(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
