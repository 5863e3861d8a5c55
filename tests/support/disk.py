"""Adverse storage for a daemon's database: a small tmpfs that a test fills up, and an
application that holds the database's write lock.

Both need nothing but loopback and root (tmpfs); tests that use SmallDisk skip without
root.
"""

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.support.wait import wait_until


class SmallDisk:
    """A tmpfs of `size` bytes mounted on `path` (created). fill() takes all its free
    space with a filler file, free() deletes the filler. umount() is safe to call twice
    and falls back to a lazy unmount when something still has files open there."""

    def __init__(self, path, size=32 << 20):
        self.path = Path(path)
        self.size = size
        self.filler = self.path / "filler"
        self.mounted = False

    def mount(self):
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755",
                        "tinymq-test-disk", str(self.path)], check=True, capture_output=True)
        self.mounted = True
        return self

    def free_bytes(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self):
        """Take every free byte: fallocate what is free, then write the last pages one
        by one until ENOSPC. Returns the filler's size."""
        with open(self.filler, "ab") as f:
            free = self.free_bytes()
            if free:
                try:
                    os.posix_fallocate(f.fileno(), f.tell(), free)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
            page = b"\xff" * 4096
            while True:
                try:
                    os.write(f.fileno(), page)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        break
                    raise
            return os.fstat(f.fileno()).st_size

    def free(self):
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def umount(self):
        if not self.mounted:
            return
        proc = subprocess.run(["umount", str(self.path)], capture_output=True)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        self.mounted = False


def can_mount_tmpfs():
    return os.geteuid() == 0


@contextlib.contextmanager
def frozen(daemon):
    """SIGSTOP the daemon's process for the block, SIGCONT after (even on failure)."""
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signal.SIGCONT)


def truncate_wal(db, timeout=10, busy_ms=200):
    """Checkpoint the whole WAL into the database and truncate the -wal file to 0 bytes,
    so that the next write must allocate new space. Waits out busy readers/writers.
    Returns the size of the -wal file after it (0)."""
    wal = Path(str(db) + "-wal")

    def attempt():
        con = sqlite3.connect(str(db), timeout=busy_ms / 1000, isolation_level=None)
        try:
            busy, _log, _done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:
            return False
        finally:
            con.close()
        return busy == 0 and (not wal.exists() or wal.stat().st_size == 0)

    wait_until(attempt, timeout, f"checkpoint and truncate {wal}", interval=0.05)
    return wal.stat().st_size if wal.exists() else 0


def cut_off_space(daemon, disk, while_frozen=None, attempts=200):
    """Make the daemon's database (on `disk`) unwritable for new data, deterministically:
    with the daemon frozen, move the WAL into the database and truncate it, call
    while_frozen() (e.g. to enqueue rows the daemon has not seen yet), then fill the disk.
    Once it continues, the daemon's next write must allocate space, and fails. (A frozen
    daemon may hold a read snapshot that stops the checkpoint: then it runs a moment and
    we try again.) Returns the filler's size."""
    for _ in range(attempts):
        with frozen(daemon):
            try:
                truncate_wal(daemon.db, timeout=0, busy_ms=20)
            except AssertionError:
                pass
            else:
                if while_frozen is not None:
                    while_frozen()
                return disk.fill()
        time.sleep(0.002)  # let it finish what it was reading
    raise AssertionError(f"could not checkpoint {daemon.db} with {daemon.name} frozen")


class WriteLock:
    """An application holding a write transaction (BEGIN IMMEDIATE) on a database, from
    the test process, as a program that enqueues in a long transaction would."""

    def __init__(self, db):
        self.db = str(db)
        self.con = None
        self.taken_at = None

    def acquire(self, timeout=10):
        self.con = sqlite3.connect(self.db, timeout=timeout, isolation_level=None)
        self.con.execute("BEGIN IMMEDIATE")
        self.taken_at = time.monotonic()
        return self

    def release(self):
        if self.con is not None:
            try:
                if self.con.in_transaction:
                    self.con.execute("COMMIT")
            finally:
                self.con.close()
                self.con = None
        return time.monotonic() - self.taken_at if self.taken_at else 0.0

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
