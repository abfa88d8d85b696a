"""How far a long measurement is and how long it will still take, in the log.

A rate-limited INFO line (`LIME explanations: 12/30 images, 41 s, about 61 s left`) rather than a
progress bar, so that it reaches log files, cluster job logs and W&B's console capture alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Progress:
    """Counts work done out of `total` and logs it, at most every `every` seconds and once at the
    end; the time left is extrapolated linearly from the rate so far."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "images",
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit, self.every, self.clock = what, total, unit, every, clock
        self.done = 0
        self.start = self.last = clock()

    def advance(self, n: int) -> None:
        """`n` more units done; log if `every` seconds passed since the last line, or at the end."""
        self.done += n
        now = self.clock()
        finished = self.done >= self.total
        if not finished and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        if finished:
            log.info("%s: %d %s in %.0f s", self.what, self.total, self.unit, elapsed)
            return
        left = elapsed / self.done * (self.total - self.done)
        log.info(
            "%s: %d/%d %s, %.0f s, about %.0f s left",
            self.what,
            self.done,
            self.total,
            self.unit,
            elapsed,
            left,
        )
