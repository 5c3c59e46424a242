"""Progress bars on a terminal, nothing otherwise; and printing that survives a closed pipe."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int, description: str) -> Iterator[T]:
    """``iterable`` with a progress bar on stderr when stderr is a terminal (the bar disappears when done);
    the bare iterable otherwise, so logs and pipes get nothing extra."""
    if not sys.stderr.isatty():
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, total=total, desc=description, leave=False)


def say(line: str) -> None:
    """Print a line to stdout at once. When stdout is a closed pipe (``kernel-reg train ... | head -1``),
    the line is dropped and stdout is pointed at /dev/null, so the work goes on and exits cleanly."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
