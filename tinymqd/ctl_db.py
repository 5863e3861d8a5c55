"""The `tinymq` command's database work: what it reads and writes with plain SQL, beside
the daemon and the applications.

Every connection waits up to BUSY_TIMEOUT_S for a lock, and every write is one short
`BEGIN IMMEDIATE` transaction that is tried again while the database is busy, so a
command never fails with "database is locked" while the database is usable. Reads are
single statements (no read transaction is left open: that would stop checkpoints).
"""

import json
import os
import sqlite3
import time
import urllib.parse

from tinymqd import numbering

BUSY_TIMEOUT_S = 30.0
RETRY_PAUSE_S = 0.05
MAX_BATCH_BYTES = 4 * 1024 * 1024  # of message data read from mqin at once (at least one)
PAGE_ROWS = 1000  # rows of mqout read per statement for a listing



def _day(column):
    """SQL: the column as a date SQLite understands (CURRENT_TIMESTAMP writes UTC text),
    else NULL; a number is not taken for a Julian day."""
    return f"(CASE WHEN typeof({column}) = 'text' THEN julianday({column}) END)"


def _age(column):
    """SQL: seconds since the date in column, NULL when it is not a date."""
    return f"((julianday('now') - {_day(column)}) * 86400.0)"


_HOST, _PORT = numbering.dest_host("m"), numbering.dest_port("m")
# A destination as the user writes it: the row's host (or tinymq.pl's dhost) as written,
# or as the daemon reads it (trimmed, [brackets] removed).
_TO = f"(coalesce(m.host, m.dhost) = :to OR {_HOST} = :to)"
_SIZE = ("(CASE typeof(m.data) WHEN 'blob' THEN length(m.data) "
         "WHEN 'null' THEN 0 ELSE length(CAST(m.data AS BLOB)) END)")


class DbError(Exception):
    """The database cannot be used for this; str() is the one line shown to the user."""


def open_database(path, write=True):
    """A connection to the tinymq database at `path` (never creates one); without
    `write`, read-only where the file is not writable."""
    denied = (f"database {path}: permission denied (root and members of group tinymq "
              f"may use it)")
    try:
        os.stat(path)
    except PermissionError:  # e.g. /var/lib/tinymq (2770) is closed to non-members
        raise DbError(denied) from None
    except OSError:
        raise DbError(f"database {path} does not exist (tinymqd creates it when it "
                      f"starts; `tinymqd --create-db` creates it without starting)") from None
    writable = os.access(path, os.R_OK | os.W_OK)
    if not (writable or (not write and os.access(path, os.R_OK))):
        raise DbError(denied)
    mode = "rw" if writable else "ro"
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise DbError(f"database {path}: {e}") from None
    conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
    return Database(conn, path)


class Database:
    """A connection and the file it is for; every method turns SQLite's errors into a
    DbError that names the file."""

    def __init__(self, conn, path):
        self.conn = conn
        self.path = path

    def close(self):
        self.conn.close()

    def read(self, sql, params=()):
        """All rows of one statement."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self.error(e) from None

    def write(self, *statements):
        """Run (sql, params) pairs in one BEGIN IMMEDIATE transaction, again while the
        database is busy (up to BUSY_TIMEOUT_S); the cursor of each, in order."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    done = [self.conn.execute(sql, params) for sql, params in statements]
                    self.conn.execute("COMMIT")
                    return done
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() >= deadline:
                    raise self.error(e) from None
                time.sleep(RETRY_PAUSE_S)
            except sqlite3.Error as e:
                raise self.error(e) from None

    def data_version(self):
        """Changes whenever another connection commits (PRAGMA data_version)."""
        return self.read("PRAGMA data_version")[0][0]

    def error(self, e):
        """The DbError for SQLite's error e."""
        text = str(e)
        if _busy(e):
            return DbError(f"database {self.path} stayed locked for {BUSY_TIMEOUT_S:g} s")
        if text.startswith(("no such table", "no such column")):
            return DbError(f"database {self.path}: {text} (tinymqd has not set it up: "
                           f"start tinymqd once, or run tinymqd --create-db)")
        return DbError(f"database {self.path}: {text}")


def _busy(e):
    return "locked" in str(e) or "busy" in str(e)


# -- mqout -------------------------------------------------------------------------------

def enqueue(db, host, port, token, data):
    """INSERT one row into mqout (port None: the table's default, 9000); its x."""
    if port is None:
        sql = "INSERT INTO mqout (host, token, data) VALUES (?, ?, ?)"
        params = (host, token, data)
    else:
        sql = "INSERT INTO mqout (host, port, token, data) VALUES (?, ?, ?, ?)"
        params = (host, port, token, data)
    (cursor,) = db.write((sql, params))
    return cursor.lastrowid


def queued_row(db, x):
    """(destination host, port, last_error) of the row x of mqout, or None if gone."""
    rows = db.read(f"SELECT {_HOST}, {_PORT}, m.last_error FROM mqout AS m WHERE m.x = ?",
                   (x,))
    return rows[0] if rows else None


def queue_listing(db, to=None):
    """Rows of mqout in order of x, as dicts (x, ts, age_s, host, port, token, size,
    type, last_error); read a page at a time."""
    where = f"m.x > :after{' AND ' + _TO if to is not None else ''}"
    sql = (f"SELECT m.x, m.ts, {_age('m.ts')}, {_HOST}, {_PORT}, m.token, {_SIZE}, "
           f"typeof(m.data), m.last_error FROM mqout AS m WHERE {where} "
           f"ORDER BY m.x LIMIT {PAGE_ROWS}")
    after = 0
    while True:
        rows = db.read(sql, {"after": after, "to": to})
        for x, ts, age, host, port, token, size, kind, error in rows:
            yield {"x": x, "ts": _text(ts), "age_s": _round(age), "host": host,
                   "port": port, "token": _text(token), "size": size, "type": kind,
                   "last_error": error}
        if len(rows) < PAGE_ROWS:
            return
        after = rows[-1][0]


def delete_queued(db, xs=None, to=None, older_than=None):
    """DELETE rows of mqout: those numbered xs, or those to `to` and/or older than
    `older_than` seconds (by ts, as UTC). Returns (deleted, skipped): skipped counts the
    rows --older-than could not judge because their ts is not a date."""
    if xs is not None:
        (cursor,) = db.write(("DELETE FROM mqout WHERE x IN "
                              "(SELECT value FROM json_each(?))", (json.dumps(xs),)))
        return cursor.rowcount, 0
    conditions, params = [], {"to": to, "age": older_than}
    if to is not None:
        conditions.append(_TO)
    skipped = 0
    if older_than is not None:
        skip = " AND ".join(conditions + [f"{_day('m.ts')} IS NULL"])
        skipped = db.read(f"SELECT count(*) FROM mqout AS m WHERE {skip}", params)[0][0]
        conditions.append(f"{_age('m.ts')} > :age")
    where = " AND ".join(conditions) or "1"
    (cursor,) = db.write((f"DELETE FROM mqout WHERE x IN "
                          f"(SELECT m.x FROM mqout AS m WHERE {where})", params))
    return cursor.rowcount, skipped


# -- holds -------------------------------------------------------------------------------

def hold(db, host, port=None):
    """Note a held destination (port None: every port of host); False if it already was."""
    (cursor,) = db.write((
        "INSERT INTO tinymq_holds (host, port) SELECT ?1, ?2 WHERE NOT EXISTS "
        "(SELECT 1 FROM tinymq_holds WHERE host = ?1 AND port IS ?2)", (host, port)))
    return cursor.rowcount > 0


def release(db, host, port=None):
    """Remove the holds of host (port None: all of them, for any port); how many."""
    if port is None:
        statement = ("DELETE FROM tinymq_holds WHERE host = ?", (host,))
    else:
        statement = ("DELETE FROM tinymq_holds WHERE host = ? AND port IS ?", (host, port))
    (cursor,) = db.write(statement)
    return cursor.rowcount


def holds(db):
    """[(host, port or None, since)] of the held destinations."""
    return db.read("SELECT host, port, since FROM tinymq_holds ORDER BY host, port")


# -- figures for tinymq status -----------------------------------------------------------

def node_id(db):
    """This database's node id as 16 hex digits, or None before tinymqd gave it one."""
    rows = db.read("SELECT value FROM tinymq_meta WHERE key = 'node_id'")
    return f"{rows[0][0]:016x}" if rows and isinstance(rows[0][0], int) else None


def destinations(db):
    """Per destination (host, port) of mqout: pending rows, the age of the oldest (s),
    and the last_error of the first waiting row, as dicts."""
    rows = db.read(f"SELECT {_HOST} AS h, {_PORT} AS p, count(*), "
                   f"max({_age('m.ts')}), min(m.x) "
                   f"FROM mqout AS m GROUP BY h, p ORDER BY h, p")
    out = []
    for host, port, pending, age, first in rows:
        error = db.read("SELECT last_error FROM mqout WHERE x = ?", (first,))
        out.append({"host": host, "port": port, "pending": pending,
                    "oldest_age_s": _round(age),
                    "last_error": error[0][0] if error else None})
    return out


def senders(db):
    """Per sending node heard from (tinymq_rx): the address it was heard from last,
    messages received (about: the sum of its streams' numbers) and when, as dicts."""
    rows = db.read(
        f"SELECT g.sender, r.shost, r.sport, g.seen, g.received, {_age('g.seen')} FROM "
        f"(SELECT sender, max(seen) AS seen, sum(max(next_seq - 1, 0)) AS received "
        f" FROM tinymq_rx GROUP BY sender) AS g "
        f"JOIN tinymq_rx AS r ON r.rowid = (SELECT rowid FROM tinymq_rx "
        f" WHERE sender = g.sender ORDER BY seen DESC LIMIT 1) ORDER BY g.seen DESC")
    return [{"node": _node(sender), "host": host, "port": port, "received": received,
             "last_heard": _text(seen), "last_heard_s": _round(age)}
            for sender, host, port, seen, received, age in rows]


# -- mqin --------------------------------------------------------------------------------

# data as bytes for TEXT and BLOB (byte for byte, whatever the encoding), else as is.
_MESSAGE = ("SELECT x, ts, shost, sport, token, typeof(data), "
            "CASE WHEN typeof(data) IN ('text', 'blob') THEN CAST(data AS BLOB) "
            "ELSE data END, "
            "sender, seq, sent_ts, key FROM mqin WHERE x > ?")
MESSAGE_FIELDS = ("x", "ts", "shost", "sport", "token", "type", "data", "sender", "seq",
                  "sent_ts", "key")


def received(db, after, shosts=None, limit=1000):
    """Up to `limit` messages of mqin with x above `after` (from one of `shosts` when
    given), in order of x, as dicts; fewer when their data passes MAX_BATCH_BYTES."""
    sql, params = _MESSAGE, [after]
    if shosts is not None:
        sql += " AND shost IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(sorted(shosts)))
    sql += f" ORDER BY x LIMIT {int(limit)}"
    out, size = [], 0
    try:
        cursor = db.conn.execute(sql, params)
        try:
            for row in cursor:
                out.append(dict(zip(MESSAGE_FIELDS, row)))
                size += len(row[6]) if isinstance(row[6], bytes) else 16
                if size >= MAX_BATCH_BYTES:
                    break
        finally:
            cursor.close()  # ends the read: no transaction stays open
    except sqlite3.Error as e:
        raise db.error(e) from None
    return out


def delete_received(db, xs):
    """DELETE exactly the rows xs of mqin; how many were still there."""
    if not xs:
        return 0
    (cursor,) = db.write(("DELETE FROM mqin WHERE x IN (SELECT value FROM json_each(?))",
                          (json.dumps(list(xs)),)))
    return cursor.rowcount


def _node(value):
    return f"{value:016x}" if isinstance(value, int) and value >= 0 else _text(value)


def _text(value):
    return None if value is None else str(value)


def _round(value, digits=1):
    return None if value is None else round(value, digits)
