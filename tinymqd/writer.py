"""The SQLite writer thread: the only code that writes, many operations per transaction.

Other threads submit rows for the staged tables of store.STAGED and, rarely, operations
(callables taking the connection), each with an optional `done` callback. The writer
takes what has queued up as one batch and holds the database lock as briefly as we can
make it, because applications insert with the sqlite3 CLI, which waits for no lock:
- the batch is written as transactions of whole submissions and about MAX_ROWS rows
  each, so each hold of the lock is short;
- rows are first copied into in-memory TEMP tables, outside the lock;
- just before taking the lock, the writer waits while another process is between
  opening the database and its own INSERT (lockwatch), so that INSERT goes first;
- one statement moves them all (store.APPLY_ALL), as its own transaction: the lock is
  held for a single call into SQLite, never across a wait for Python's GIL; the staged
  tables are emptied after COMMIT, again outside the lock (rare operations given as
  callables share a BEGIN IMMEDIATE transaction with it instead);
- while sqlite3 CLIs insert rows one after another (other processes keep committing,
  and one of their short-lived connections was open a moment ago), a batch waits until
  the next such connection has closed, at most DEFER_DELETES for nothing but deletes of
  delivered rows, DEFER for anything else: the writer takes the lock less often, and
  when the next CLI is furthest from its INSERT (one that has not opened the file yet
  cannot be seen, and meets the lock if the writer's hold is slowed down). CLIs further
  apart find the writer committing at once, right after the one before them;
- COMMIT runs with synchronous=NORMAL, which releases the lock without waiting for the
  disk; after the batch's last transaction the writer syncs the WAL file itself, once,
  outside the lock.
Callbacks run only after that sync, so an acknowledgement never precedes the durable
write. The WAL is the one SQLite uses: beside the file the database path resolves to
(SQLite follows symlinks), as SQLite names it. The first sync also syncs its directory,
as the file may just have been created. While this process has the database open, no
other can remove the WAL (only the last connection to close does, after a checkpoint
that syncs the database), so a WAL that is missing, replaced or cannot be synced after
a commit stops the daemon with nothing acknowledged. A checkpoint by another process
between the commit and the sync may copy the transaction into the database and reset
or truncate the WAL (same file): that checkpoint syncs the database first, unless that
process set synchronous=OFF, which gives up durability for every writer of the file.

A locked database, a full disk, an I/O error or a row refused by a constraint an
application added is waited out (logged once), never half-applied: the failed
transaction is retried whole. A damaged database (SQLite says
it is malformed or not a database) stops the daemon with one line that says how to
recover it, and an exit status (EX_DATAERR) on which systemd does not restart it.
"""

import errno
import logging
import os
import queue
import sqlite3
import time

from tinymqd import lockwatch, store
from tinymqd.worker import Worker

log = logging.getLogger("tinymqd.writer")

MAX_BATCH = 1000
# Rows per transaction, roughly (a bigger submission goes whole): about 0.2 ms of work
# in the lock, less than the sqlite3 CLI needs from opening the database to its INSERT.
# A batch of submissions is written as several such transactions and one WAL sync.
MAX_ROWS = 128
# Under load, start a transaction at most this often. An idle writer starts at once, so
# a single message is not delayed.
MIN_GAP = 0.001
# Deletes of delivered rows (nobody waits for them) wait at most this long for a
# short-lived connection of another process to close (looking every LINGER_POLL), while
# others keep writing the database (their commits seen twice in ACTIVE seconds) and
# such a connection was open less than DEFER_DELETES ago: CLIs inserting rows one after
# another then meet few transactions, each right after one of them has exited.
DEFER_DELETES = 0.05
ACTIVE = 1.0
LINGER_POLL = 0.001
# Other work (rows received, whose acknowledgement waits for the commit) waits at most
# this long.
DEFER = 0.005
# Errors worth waiting out: another process holds the lock, the disk is full or failing,
# or the file became read-only (permissions being fixed). A damaged database stops the
# daemon for good (store.DatabaseDamaged: exit 65, which tinymq.service does not
# restart); anything else is a bug and stops the daemon so that systemd restarts it.
TRANSIENT = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR",
             "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL",
             # a UNIQUE index, CHECK or trigger the application added refuses a row:
             # waited out too, with an error that says so (a restart would meet it again)
             "SQLITE_CONSTRAINT"}
STOP = object()


class Writer(Worker):
    name = "writer"

    def __init__(self, path, stopping):
        super().__init__(stopping)
        self.path = path
        self.queue = queue.SimpleQueue()
        self._trouble_since = None
        self._file = None  # the database file as SQLite names it (symlinks resolved)
        self._wal = None  # (file descriptor, (device, inode)) of the WAL file
        self._last_commit = 0.0
        self._data_version = None  # PRAGMA data_version: changes when others commit
        self._others_wrote = (float("-inf"),) * 2  # when we last saw that they had, twice

    def submit(self, op=None, done=None, staged=None):
        """op: callable(conn) run inside the transaction; staged: {table: [rows]} for
        store.STAGED tables. All of one call is committed in the same transaction."""
        self.queue.put((staged, op, done))

    def stop(self):
        self.queue.put(STOP)

    def loop(self):
        conn = store.connect(self.path)
        self._file = database_file(conn)
        self._data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        # Not closed before the process exits: closing it would drop the SQLite locks of
        # the other threads' connections (see lockwatch).
        others = lockwatch.OtherConnections(self._file)
        try:
            while True:
                self.beat()
                try:
                    first = self.queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                pause = self._last_commit + MIN_GAP - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                batch, stop = self._drain(first)
                if (not stop and time.monotonic() - others.last_busy < DEFER_DELETES
                        and self._others_write(conn)):
                    batch, stop = self._linger(
                        batch, others, DEFER_DELETES if _deletes_only(batch) else DEFER)
                if batch:
                    try:
                        for transaction in _transactions(batch):
                            self._commit(conn, transaction, others)
                    except Abandoned:
                        log.warning("stopping with %d operations not yet acknowledged; "
                                    "peers will resend them", len(batch))
                        return
                    self._last_commit = time.monotonic()
                    self._sync_wal()
                    for _, _, done in batch:
                        if done is not None:
                            done()
                if stop:
                    return
        finally:
            conn.close()
            if self._wal is not None:
                os.close(self._wal[0])

    def _others_write(self, conn):
        """Whether other processes keep writing the database (one bulk INSERT does not
        count: nothing follows it)."""
        now = time.monotonic()
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self._others_wrote = (self._others_wrote[1], now)
        return now - self._others_wrote[0] < ACTIVE

    def _linger(self, batch, others, limit):
        """Collect more submissions until another process's short-lived connection has
        closed or `limit` seconds have passed (a submission that is not a delete ends a
        wait for deletes: DEFER is the most it may wait)."""
        deadline = time.monotonic() + limit
        seen = False
        while len(batch) < MAX_BATCH:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = self.queue.get(timeout=min(left, LINGER_POLL))
            except queue.Empty:
                item = None
            if item is STOP:
                return batch, True
            if item is not None:
                batch.append(item)
                if not _deletes_only([item]):
                    deadline = min(deadline, time.monotonic() + DEFER)
            if others.busy():
                seen = True
            elif seen:
                break  # it has just closed: the next one is furthest from its INSERT
        return batch, False

    @staticmethod
    def _clear(conn, tables):
        """Empty the staged tables, outside the lock (a rollback keeps them for a retry)."""
        if tables:
            conn.execute("BEGIN")
            for table in tables:
                conn.execute(store.STAGED[table].clear)
            conn.execute("COMMIT")

    def _sync_wal(self):
        """Make the committed transactions durable: fdatasync the WAL that holds them
        (a checkpoint syncs the WAL before and the database after copying)."""
        path = self._file + "-wal"
        try:
            if self._wal is None:
                self._open_wal(path)
            elif _identity(os.stat(path)) != self._wal[1]:
                # No other process can remove it while we have the database open: it was
                # deleted or replaced by hand, and what SQLite writes to it is lost at the
                # next start.
                raise SyncFailed(f"cannot sync {path} to disk: it was removed or "
                                 f"replaced while in use; restarting")
            os.fdatasync(self._wal[0])
        except OSError as e:
            # After a failed sync nothing tells what reached the disk: acknowledge nothing
            # and stop; peers resend whatever was not acknowledged.
            raise SyncFailed(f"cannot sync {path} to disk: {e.strerror}") from None

    def _open_wal(self, path):
        """Open the WAL, which this process's commit has just written, and sync its
        directory: the file may be new, and with synchronous=NORMAL SQLite syncs the
        directory only when it first syncs the WAL itself, at a checkpoint."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._wal = (fd, _identity(os.fstat(fd)))
        directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        except OSError as e:
            if e.errno != errno.EINVAL:  # the file system cannot; SQLite ignores it too
                raise
        finally:
            os.close(directory)

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

    def _commit(self, conn, batch, others):
        tables = set()
        conn.execute("BEGIN")  # writes only TEMP tables: takes no database lock
        for staged, _, _ in batch:
            for table, rows in (staged or {}).items():
                conn.executemany(store.STAGED[table].stage, rows)
                tables.add(table)
        conn.execute("COMMIT")
        ops = [op for _, op, _ in batch if op is not None]
        delay = 0.01
        while True:
            try:
                others.wait_until_alone()  # an application's INSERT goes first
                if not ops:
                    conn.execute(store.APPLY_ALL)  # one statement, one transaction
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(store.APPLY_ALL)
                    for op in ops:
                        op(conn)
                    conn.execute("COMMIT")
                self._clear(conn, tables)
                if self._trouble_since is not None:
                    log.warning("database writable again after %.1f s",
                                time.monotonic() - self._trouble_since)
                    self._trouble_since = None
                return
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                name = getattr(e, "sqlite_errorname", "")
                if name.startswith(store.DAMAGED):  # also extended codes (_INDEX, ...)
                    raise store.DatabaseDamaged(self._file, e) from None
                if not any(name.startswith(t) for t in TRANSIENT) or \
                        name.startswith("SQLITE_CONSTRAINT") and "tinymq_" in str(e):
                    raise  # a bug (our own tables' constraints are ours to keep)
                if self._trouble_since is None:
                    self._trouble_since = time.monotonic()
                    log.log(logging.ERROR if name.startswith("SQLITE_CONSTRAINT")
                            else logging.WARNING,
                            "cannot write database %s (%s%s); waiting and retrying, nothing "
                            "is acknowledged meanwhile", self.path, e,
                            ": an index, CHECK or trigger added to mqin or mqout refuses a "
                            "row" if name.startswith("SQLITE_CONSTRAINT") else "")
                if self.stopping.is_set():
                    # Nothing in the batch was acknowledged: safe to abandon at exit.
                    raise Abandoned() from None
                self.beat()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)


def _transactions(batch):
    """Split a batch into runs of whole submissions of about MAX_ROWS rows each."""
    run, rows = [], 0
    for item in batch:
        run.append(item)
        rows += sum(map(len, (item[0] or {}).values()))
        if rows >= MAX_ROWS:
            yield run
            run, rows = [], 0
    if run:
        yield run


def _deletes_only(batch):
    """Nothing but deletes of delivered rows: no callback waits for them."""
    return bool(batch) and all(op is None and done is None and set(staged or ()) <= {"delete"}
                               for staged, op, done in batch)


def database_file(conn):
    """The main database file of a connection as SQLite names it: symlinks resolved, so
    its WAL is this name plus "-wal"."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            return file
    raise SyncFailed("the database is not a file: nothing can be synced to disk")


def _identity(st):
    return st.st_dev, st.st_ino


class SyncFailed(Exception):
    """The disk did not confirm a write; the daemon must not acknowledge it, and exits so
    that systemd restarts it (one line, no traceback: the message says it all)."""

    exit_status = 1


class Abandoned(Exception):
    """The writer gave up an uncommitted batch because the daemon is stopping."""
