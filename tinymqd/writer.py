"""The SQLite writer thread: the only code that writes, many operations per transaction.

Other threads submit operations (callables taking the connection) with an optional
`done` callback. Each batch runs in one BEGIN IMMEDIATE transaction; callbacks run only
after the transaction is on disk, so an acknowledgement can never precede the durable
write. COMMIT runs with synchronous=NORMAL, which releases the database lock without
waiting for the disk; the writer then syncs the WAL file itself, outside the lock, so
applications inserting meanwhile (the sqlite3 CLI waits for no lock) rarely find it
taken.
A locked database, a full disk or an I/O error is waited out (logged once), never
half-applied: the whole batch is retried.
"""

import logging
import os
import queue
import sqlite3
import time

from tinymqd import store
from tinymqd.worker import Worker

log = logging.getLogger("tinymqd.writer")

MAX_BATCH = 1000
# Errors worth waiting out: another process holds the lock, the disk is full or failing,
# or the file became read-only (permissions being fixed). Anything else is a bug or a
# damaged database and stops the daemon so that systemd restarts it.
TRANSIENT = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR",
             "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL"}
STOP = object()


class Writer(Worker):
    name = "writer"

    def __init__(self, path, stopping):
        super().__init__(stopping)
        self.path = path
        self.queue = queue.SimpleQueue()
        self.commits = 0
        self._trouble_since = None
        self._wal = None  # (file descriptor, (device, inode)) of the WAL file

    def submit(self, op, done=None):
        self.queue.put((op, done))

    def backlog(self):
        return self.queue.qsize()

    def stop(self):
        self.queue.put(STOP)

    def loop(self):
        conn = store.connect(self.path)
        try:
            while True:
                self.beat()
                try:
                    first = self.queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                batch, stop = self._drain(first)
                if batch:
                    try:
                        self._commit(conn, batch)
                    except Abandoned:
                        log.warning("stopping with %d unwritten operations; nothing of "
                                    "them was acknowledged, peers will resend", len(batch))
                        return
                    self._sync_wal()
                    for _, done in batch:
                        if done is not None:
                            done()
                if stop:
                    return
        finally:
            conn.close()
            if self._wal is not None:
                os.close(self._wal[0])

    def _sync_wal(self):
        """Make the committed transaction durable (the WAL holds it until a checkpoint,
        and a checkpoint syncs the WAL before and the database after copying)."""
        path = self.path + "-wal"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return  # checkpointed and removed: nothing left to sync there
        identity = (st.st_dev, st.st_ino)
        if self._wal is None or self._wal[1] != identity:
            if self._wal is not None:
                os.close(self._wal[0])
            self._wal = (os.open(path, os.O_RDONLY | os.O_CLOEXEC), identity)
        try:
            os.fdatasync(self._wal[0])
        except OSError as e:
            # After a failed sync nothing tells what reached the disk: acknowledge nothing
            # and stop; peers resend whatever was not acknowledged.
            raise SyncFailed(f"cannot sync {path} to disk: {e.strerror}") from None

    def _drain(self, first):
        batch = []
        item = first
        while True:
            if item is STOP:
                return batch, True
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _commit(self, conn, batch):
        delay = 0.01
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op, _ in batch:
                    op(conn)
                conn.execute("COMMIT")
                self.commits += 1
                if self._trouble_since is not None:
                    log.warning("database writable again after %.1f s",
                                time.monotonic() - self._trouble_since)
                    self._trouble_since = None
                return
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                name = getattr(e, "sqlite_errorname", "")
                if not any(name.startswith(t) for t in TRANSIENT):
                    raise
                if self._trouble_since is None:
                    self._trouble_since = time.monotonic()
                    log.warning("cannot write database %s (%s); waiting and retrying, "
                                "nothing is acknowledged meanwhile", self.path, e)
                if self.stopping.is_set():
                    # Nothing in the batch was acknowledged: safe to abandon at exit.
                    raise Abandoned() from None
                self.beat()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)


class SyncFailed(Exception):
    """The disk did not confirm a write; the daemon must not acknowledge it."""


class Abandoned(Exception):
    """The writer gave up an uncommitted batch because the daemon is stopping."""
