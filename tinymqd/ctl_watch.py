"""Waiting without a busy poll, for `tinymq recv --follow` and `tinymq send --wait`: until
another process commits to the database, or a signal asks the command to stop.

The wake-up is the daemon's (wakeup.py): inotify on the database's directory (any write
to the WAL), then PRAGMA data_version (does a commit show?), plus a slow safety poll.
SQLite writes the WAL before it makes a commit visible, so right after an inotify wake
the version is looked at a few more times, briefly, as the daemon's scheduler does.
"""

import os
import select
import signal
import time

from tinymqd import wakeup

SAFETY_POLL_S = 1.0  # look at the version this often anyway
SETTLE_S = 0.1  # after an inotify wake: look again every SETTLE_POLL_S this long
SETTLE_POLL_S = 0.002
NO_INOTIFY_POLL_S = 0.02  # where inotify is unavailable


class Stop:
    """SIGINT and SIGTERM ask the command to stop at the next safe point (`requested`);
    they also wake a ChangeWaiter. A second signal interrupts at once
    (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_fd = signal.set_wakeup_fd(self._write)
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def fileno(self):
        """Readable once a signal came (signal.set_wakeup_fd)."""
        return self._read

    def drain(self):
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass

    def close(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ChangeWaiter:
    """Sleeps until another connection commits to `db` (a ctl_db.Database), a timeout,
    or `stop` fires. Made before the first look at the data, so no commit is missed."""

    def __init__(self, db, stop=None):
        self.db = db
        self.stop = stop
        # SQLite writes the WAL beside the file a symlinked path resolves to.
        directory = os.path.dirname(os.path.realpath(db.path))
        self.watch = wakeup.watch_directory(directory)
        self.version = db.data_version()
        self.settle_until = 0.0

    def close(self):
        if self.watch is not None:
            self.watch.close()

    def changed(self):
        """Whether another connection committed since the last call (or since made)."""
        version = self.db.data_version()
        if version == self.version:
            return False
        self.version = version
        return True

    def wait(self, timeout=None):
        """True once the database changed; False when `timeout` (seconds, None: no
        limit) passed or a stop was requested."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.stop is not None and self.stop.requested:
                return False
            if self.changed():
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            self._sleep(self._nap(now, deadline))

    def _nap(self, now, deadline):
        if self.watch is None:
            nap = NO_INOTIFY_POLL_S
        elif now < self.settle_until:
            nap = SETTLE_POLL_S
        else:
            nap = SAFETY_POLL_S
        return nap if deadline is None else max(0.0, min(nap, deadline - now))

    def _sleep(self, seconds):
        fds = [fd for fd in (self.watch, self.stop) if fd is not None]
        ready, _, _ = select.select(fds, [], [], seconds)
        if self.watch is not None and self.watch in ready:
            self.watch.clear()
            self.settle_until = time.monotonic() + SETTLE_S
        if self.stop is not None and self.stop in ready:
            self.stop.drain()
