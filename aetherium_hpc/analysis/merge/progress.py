"""The progress line of a long merge on stderr."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

#: More inputs than this, and stderr a terminal: a progress line.
PROGRESS_MIN_INPUTS = 10


class Progress:
    """A bar, inputs done of all, their rate and the last input's name, rewritten in place on ``stream``
    (None: nothing is written)."""

    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total = total
        self.stream = stream
        self.started = time.perf_counter()

    @classmethod
    def for_inputs(cls, n_inputs: int, progress: bool | None) -> Progress:
        """On stderr when ``progress``; when it is None, for more than :data:`PROGRESS_MIN_INPUTS`
        inputs on a terminal."""
        if progress is None:
            progress = n_inputs > PROGRESS_MIN_INPUTS and sys.stderr.isatty()
        return cls(n_inputs, sys.stderr if progress else None)

    def update(self, done: int, name: str) -> None:
        if self.stream is None:
            return
        width = 30
        filled = width * done // max(self.total, 1)
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.stream.write(
            f"\rmerging [{'#' * filled}{' ' * (width - filled)}] {done}/{self.total} "
            f"{rate:5.1f}/s {os.path.basename(name)[:30]:<30}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self.stream = None
