"""The SQLite database: connections, creating and opening it, and the staged writes
the writer applies in one statement. The tables are schema.py's, the numbering of rows
numbering.py's, the node's identity identity.py's."""

import errno
import fcntl
import os
import sqlite3

from tinymqd import identity, numbering, schema


class StoreError(Exception):
    """The database cannot be used; str() is the one line shown to the user. The daemon
    exits with exit_status (1: systemd tries again)."""

    exit_status = 1


EX_DATAERR = 65  # sysexits.h: the data (the database file) is bad; the unit does not restart
DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def damaged(path, error):
    """The StoreError for an sqlite3 error: DatabaseDamaged when SQLite says the file is
    damaged (exit 65, no restart loop), else a plain one."""
    if getattr(error, "sqlite_errorname", "").startswith(DAMAGED):
        return DatabaseDamaged(os.path.realpath(path), error)
    return StoreError(f"database {path}: {error}")


class DatabaseDamaged(StoreError):
    """SQLite found the database file damaged: restarting cannot help. str() is the one
    line an admin needs."""

    exit_status = EX_DATAERR

    def __init__(self, file, error):
        directory, name = os.path.split(file)
        new = os.path.join(directory, f"{name}.recovered")
        super().__init__(
            f"database {file} is damaged ({error}); restarting cannot repair it: stop "
            f"tinymq, save what is readable with `sqlite3 {file} .recover | sqlite3 {new}`, "
            f"move {name}, {name}-wal and {name}-shm aside, put {name}.recovered in their "
            f"place (owned by the daemon's user), then start tinymq; or restore a backup")


class Staging:
    """A TEMP table of the writer's connection (in memory, no database lock needed):
    rows are copied in outside the lock, and `apply` moves them all inside it."""

    def __init__(self, name, columns, apply, key=None):
        definition = ", ".join(columns) + (f", PRIMARY KEY ({key})" if key else "")
        self.create = f"CREATE TEMP TABLE staged_{name} ({definition})"
        self.stage = (f"INSERT OR REPLACE INTO temp.staged_{name} "
                      f"VALUES ({', '.join('?' * len(columns))})")
        self.apply = apply
        self.clear = f"DELETE FROM temp.staged_{name}"


# In the order they are applied. A later row for the same key replaces an earlier one
# (the newest stream counter, the highest committed point).
STAGED = {
    # Rows the peer has committed: all of a stream below `upto`.
    "delete": Staging("delete", ["stream", "upto"], key="stream", apply="""
        DELETE FROM mqout WHERE rowid IN (
            SELECT m.rowid FROM temp.staged_delete AS d
            JOIN mqout AS m ON m.stream = d.stream AND m.seq < d.upto)"""),
    # Arrived messages in arrival order; data gets back the type it had at the sender
    # (INTEGER and REAL arrive as Python numbers, TEXT as bytes, cast here).
    "mqin": Staging("mqin", ["shost", "sport", "token", "kind", "data", "sender", "seq",
                             "sent", "key"], apply="""
        INSERT INTO mqin (shost, sport, token, data, sender, seq, sent_ts, key)
        SELECT shost, sport, CAST(token AS TEXT),
               CASE kind WHEN 3 THEN CAST(data AS TEXT) ELSE data END,
               sender, seq, CAST(sent AS TEXT), key
        FROM temp.staged_mqin ORDER BY rowid"""),
    # How far each sender's stream is stored: same transaction as its mqin rows.
    "rx": Staging("rx", ["sender", "stream", "next_seq", "shost", "sport"],
                  key="sender, stream", apply="""
        INSERT INTO tinymq_rx (sender, stream, next_seq, shost, sport, seen)
        SELECT sender, stream, next_seq, shost, sport, CURRENT_TIMESTAMP
        FROM temp.staged_rx WHERE true
        ON CONFLICT (sender, stream) DO UPDATE SET
            next_seq = max(next_seq, excluded.next_seq), shost = excluded.shost,
            sport = excluded.sport, seen = excluded.seen"""),
}

STAGED["old_rows"] = Staging("old_rows", ["lo", "hi"],
                             apply="; ".join(numbering.OLD_ROWS_NUMBERING))
STAGED["renumber"] = Staging("renumber", ["x"], key="x",
                             apply="; ".join(numbering.FIXED_ROWS_NUMBERING))
# Notes of moved rows the scheduler has read (numbering.py): up to this rowid.
STAGED["moved"] = Staging("moved", ["upto"], apply="""
    DELETE FROM tinymq_moved WHERE rowid <= (SELECT max(upto) FROM temp.staged_moved)""")

BUSY_TIMEOUT_S = 0.2


def _create_file(path):
    """Create a missing database file so that umask decides its mode (group access).

    SQLite itself would create it 0644, locking group members out.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return
    os.close(fd)


def claim(path):
    """Make sure no other tinymqd serves the database: an exclusive flock on the file
    (SQLite's own locks are fcntl locks, which flock leaves alone), held until the
    process exits. Returns its descriptor, which must stay open (closing any descriptor
    of the file would drop SQLite's locks). Raises StoreError."""
    try:  # O_CREAT, as SQLite would: also the file a dangling symlink names
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise StoreError(f"database {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreError(f"database {path} is served by another tinymqd already: stop "
                             f"that one first, or give this one a database of its own") \
                from None
        raise StoreError(f"database {path}: cannot lock it: {e.strerror}") from None
    return fd


# All staged tables are applied by one statement: inserting a row into temp.staged_apply
# fires a TEMP trigger that runs every `apply`. The statement takes the write lock at its
# start and commits at its end (autocommit), so the lock is held for one call into SQLite
# only, never across a wait for Python's GIL, which the other threads hold most of the
# time under load.
APPLY_ALL = "INSERT INTO temp.staged_apply VALUES (1)"
_APPLY_TRIGGER = ("CREATE TEMP TRIGGER staged_apply_all AFTER INSERT ON staged_apply BEGIN "
                  + "; ".join(staging.apply for staging in STAGED.values())
                  + "; DELETE FROM staged_apply; END")


def connect(path, *, readonly=False):
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    if readonly:
        conn.text_factory = bytes  # deliver TEXT byte for byte, whatever its encoding
        conn.execute("PRAGMA query_only=1")
    else:
        # The writer syncs the WAL itself after COMMIT, outside the lock (see writer.py).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        for staging in STAGED.values():
            conn.execute(staging.create)
        conn.execute("CREATE TEMP TABLE staged_apply (go)")
        conn.execute(_APPLY_TRIGGER)
    return conn


def initialize(path, new_run=False):
    """Create the database and tables when missing, bring them up to date, and return
    this node's identity.Identity; with new_run (the daemon starting), open new streams
    for the rows inserted from now on.

    Raises StoreError with a readable line when the file cannot be used.
    """
    try:
        _create_file(path)
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = "
                                        "'trigger' AND name LIKE 'tinymq!_%' ESCAPE '!'"
                                        ).fetchall():
                conn.execute(f"DROP TRIGGER {name}")  # recreated below, as they are now
            schema.create(conn)
            node = identity.establish(conn, os.path.realpath(path))
            if new_run:
                identity.start_run(conn)
            waiting = conn.execute(numbering.OLD_ROWS, (0, 1)).fetchone() is not None
            numbering.create_triggers(conn, [name for name in numbering.triggers()
                                             if not (waiting and name in numbering.NUMBERING)])
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise damaged(path, e) from None
    except OSError as e:
        raise StoreError(f"database {path}: {e.strerror}") from None
    return node


class StoredUpto:
    """How far each sending stream is stored here (tinymq_rx), looked up when a stream
    comes into the receiver's memory, on a read-only connection of its own."""

    QUERY = "SELECT next_seq FROM tinymq_rx WHERE sender = ? AND stream = ?"

    def __init__(self, path):
        self.path = path
        self.conn = connect(path, readonly=True)

    def __call__(self, sender, stream):
        try:
            row = self.conn.execute(self.QUERY, (sender, stream)).fetchone()
        except sqlite3.DatabaseError as e:
            raise damaged(self.path, e) from None
        return row[0] if row else 0


def recent_senders(path, days):
    """(stream, host, port) of the peers that sent to us within `days`: for each sending
    node and address, the stream heard from last."""
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute(
            "SELECT stream, shost, sport, max(seen) FROM tinymq_rx "
            "WHERE seen > datetime('now', ?) GROUP BY sender, shost, sport",
            (f"-{days} days",)).fetchall()
    finally:
        conn.close()
    return [(stream, as_text(shost), sport) for stream, shost, sport, _ in rows]


def as_text(value):
    """A value read with TEXT as bytes (which need not be UTF-8), as str; other values
    (None, numbers) as they are."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


