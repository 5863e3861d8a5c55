"""Counting noisy events and logging them at a limited rate."""

import collections
import time


class CountingLog:
    """Counts events by reason; emits at most one summary line per `interval` seconds."""

    def __init__(self, logger, what, interval=10.0):
        self.logger = logger
        self.what = what
        self.interval = interval
        self.total = 0
        self._pending = collections.Counter()
        self._last_source = None
        self._next_log = 0.0

    def count(self, reason, source=None):
        self.total += 1
        self._pending[reason] += 1
        self._last_source = source
        now = time.monotonic()
        if now >= self._next_log:
            self.flush(now)

    def flush(self, now=None, force=False):
        """Log what is pending, if it is time (or force)."""
        if not self._pending:
            return
        now = time.monotonic() if now is None else now
        if now < self._next_log and not force:
            return
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self._pending.items()))
        where = f"; last from {self._last_source}" if self._last_source else ""
        self.logger.warning("dropped %d %s (%s)%s", sum(self._pending.values()),
                            self.what, reasons, where)
        self._pending.clear()
        self._next_log = now + self.interval
