"""The SQLite database: schema, connections, and the node identity stored in it."""

import os
import secrets
import sqlite3

from tinymqd.constants import DEFAULT_PORT


class StoreError(Exception):
    """The database cannot be used; str() is the one line shown to the user."""


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS mqout (
    x          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         DEFAULT CURRENT_TIMESTAMP,
    host       TEXT,
    port       INTEGER DEFAULT {DEFAULT_PORT},
    token      TEXT,
    data,
    last_error TEXT,
    stream     INTEGER,
    seq        INTEGER
);
CREATE TABLE IF NOT EXISTS mqin (
    x       INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      DEFAULT CURRENT_TIMESTAMP,
    shost   TEXT,
    sport   INTEGER,
    token   TEXT,
    data,
    sender  TEXT,
    seq     INTEGER,
    sent_ts TEXT
);
CREATE TABLE IF NOT EXISTS tinymq_meta (
    key   TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS tinymq_streams (
    id       INTEGER PRIMARY KEY,
    host     TEXT NOT NULL,
    port     INTEGER NOT NULL,
    next_seq INTEGER NOT NULL,
    UNIQUE (host, port)
);
CREATE TABLE IF NOT EXISTS tinymq_rx (
    sender   INTEGER NOT NULL,
    stream   INTEGER NOT NULL,
    next_seq INTEGER NOT NULL,
    shost    TEXT,
    sport    INTEGER,
    seen     DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (sender, stream)
);
"""



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
            SELECT m.x FROM temp.staged_delete AS d
            JOIN mqout AS m ON m.stream = d.stream AND m.seq < d.upto)"""),
    # Arrived messages in arrival order; data gets back the type it had at the sender.
    "mqin": Staging("mqin", ["shost", "sport", "token", "kind", "data", "sender", "seq",
                             "sent"], apply="""
        INSERT INTO mqin (shost, sport, token, data, sender, seq, sent_ts)
        SELECT shost, sport, CAST(token AS TEXT),
               CASE kind WHEN 3 THEN CAST(data AS TEXT)
                         WHEN 1 THEN CAST(CAST(data AS TEXT) AS INTEGER)
                         WHEN 2 THEN CAST(CAST(data AS TEXT) AS REAL) ELSE data END,
               sender, seq, CAST(sent AS TEXT)
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

# Numbering: every row inserted into mqout gets its destination stream and the stream's
# next sequence number from a trigger, in the inserting transaction itself. So a row is
# never without its number, numbers follow the order of x, and the daemon's writer never
# has to rewrite the rows applications insert (its transactions stay short). A row whose
# host or port cannot be used stays unnumbered; so does a row whose host or port an
# application changes to unusable values (a changed row is numbered afresh).
def _dest_host(row):
    return f"trim({row}.host, ' []')"


def _dest_port(row):
    return f"coalesce({row}.port, {DEFAULT_PORT})"


def row_problem(row):
    """SQL: why the row cannot be sent (the text its last_error gets), NULL if it can.
    This is the one rule: the triggers number exactly the rows it finds no problem in."""
    return (f"CASE WHEN coalesce({_dest_host(row)}, '') = '' "
            f"THEN 'host is empty: set it to a name or an IP address' "
            f"WHEN NOT ({row}.port IS NULL OR (typeof({row}.port) = 'integer' "
            f"AND {row}.port BETWEEN 1 AND 65535)) "
            f"THEN 'port ' || quote({row}.port) || ' is not a number from 1 to 65535' END")


def _usable(row):
    return f"({row_problem(row)}) IS NULL"


_DEST_HOST, _DEST_PORT, _USABLE = _dest_host("NEW"), _dest_port("NEW"), _usable("NEW")
_NUMBER = f"""
    INSERT INTO tinymq_streams (host, port, next_seq) VALUES ({_DEST_HOST}, {_DEST_PORT}, 1)
        ON CONFLICT (host, port) DO NOTHING;
    UPDATE mqout SET (stream, seq) = (
        SELECT id, next_seq FROM tinymq_streams
        WHERE host = {_DEST_HOST} AND port = {_DEST_PORT}) WHERE x = NEW.x;
    UPDATE tinymq_streams SET next_seq = next_seq + 1
        WHERE host = {_DEST_HOST} AND port = {_DEST_PORT};
"""
_UNNUMBER = "UPDATE mqout SET stream = NULL, seq = NULL WHERE x = NEW.x;"
TRIGGERS = {
    "tinymq_number_new": f"AFTER INSERT ON mqout WHEN {_USABLE} BEGIN {_NUMBER} END",
    "tinymq_unusable_new": (f"AFTER INSERT ON mqout WHEN NEW.stream IS NOT NULL "
                            f"AND NOT ({_USABLE}) BEGIN {_UNNUMBER} END"),
    "tinymq_number_changed": (f"AFTER UPDATE OF host, port ON mqout WHEN {_USABLE} "
                              f"BEGIN {_NUMBER} END"),
    "tinymq_unusable_changed": (f"AFTER UPDATE OF host, port ON mqout WHEN NOT ({_USABLE}) "
                                f"BEGIN {_UNNUMBER} END"),
}

# Rows that were in mqout before the numbering triggers existed (a database an
# application or the old Perl tinymq filled before tinymqd first ran). While any is
# left, the numbering triggers stay away, so rows inserted meanwhile wait unnumbered
# too, and the scheduler numbers them all, lowest x first, a small chunk per
# transaction (staged "old_rows"); the transaction that numbers the last of them also
# creates the triggers (create_numbering_triggers). Every row thus gets its number in x
# order, and start-up does not wait.
NUMBERING = ("tinymq_number_new", "tinymq_number_changed")
_OLD = f"m.stream IS NULL AND m.seq IS NULL AND m.last_error IS NULL AND {_usable('m')}"
OLD_ROWS = f"SELECT m.x FROM mqout AS m WHERE {_OLD} AND m.x > ? ORDER BY m.x LIMIT ?"
# Numbers the old rows with x in [lo, hi] of temp.staged_old_rows, per destination in x
# order after the stream's last number (no WITH clause: these also run in a trigger).
_OLD_IN_CHUNK = (f"FROM temp.staged_old_rows AS o JOIN mqout AS m ON m.x BETWEEN o.lo AND o.hi "
                 f"WHERE {_OLD}")
_NUMBER_OLD = (
    f"""INSERT INTO tinymq_streams (host, port, next_seq)
        SELECT DISTINCT host, port, 1 FROM (
            SELECT {_dest_host('m')} AS host, {_dest_port('m')} AS port {_OLD_IN_CHUNK})
        WHERE true ON CONFLICT (host, port) DO NOTHING""",
    f"""UPDATE mqout SET stream = old.stream, seq = old.seq FROM (
            SELECT m.x AS x, s.id AS stream,
                   s.next_seq - 1 + row_number() OVER (PARTITION BY s.id ORDER BY m.x) AS seq
            FROM temp.staged_old_rows AS o JOIN mqout AS m ON m.x BETWEEN o.lo AND o.hi
            JOIN tinymq_streams AS s
                ON s.host = {_dest_host('m')} AND s.port = {_dest_port('m')}
            WHERE {_OLD}) AS old
        WHERE mqout.x = old.x""",
    """UPDATE tinymq_streams SET next_seq = (
            SELECT max(seq) + 1 FROM mqout WHERE stream = tinymq_streams.id)
        WHERE EXISTS (SELECT 1 FROM temp.staged_old_rows)
          AND next_seq <= (SELECT max(seq) FROM mqout WHERE stream = tinymq_streams.id)""",
)
STAGED["old_rows"] = Staging("old_rows", ["lo", "hi"], apply="; ".join(_NUMBER_OLD))


def numbering_ready(conn):
    """Whether new rows are numbered as they are inserted (no old rows wait)."""
    return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                        "AND name = ?", (NUMBERING[0],)).fetchone()[0] == 1


def create_numbering_triggers(conn):
    """From now on rows are numbered as they are inserted (after the old ones)."""
    _create_triggers(conn, NUMBERING)


def _create_triggers(conn, names):
    for name in names:  # always the current definition
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        conn.execute(f"CREATE TRIGGER {name} {TRIGGERS[name]}")


# Columns the daemon owns in mqout; added to tables made by an older version.
DAEMON_COLUMNS = {"last_error": "TEXT", "stream": "INTEGER", "seq": "INTEGER"}
REQUIRED = {"mqout": ("x", "host", "port", "token", "data"),
            "mqin": ("x", "shost", "sport", "token", "data")}
MQIN_EXTRA = {"sender": "TEXT", "seq": "INTEGER", "sent_ts": "TEXT"}

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


def initialize(path):
    """Create the database and tables when missing; return this node's identity.

    Raises StoreError with a readable line when the file cannot be used.
    """
    try:
        _create_file(path)
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            _upgrade(conn)
            conn.execute("CREATE INDEX IF NOT EXISTS mqout_stream_seq ON mqout (stream, seq)")
            waiting = not numbering_ready(conn) and conn.execute(OLD_ROWS, (0, 1)).fetchone()
            _create_triggers(conn, [name for name in TRIGGERS
                                    if not (waiting and name in NUMBERING)])
            node = _node_id(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"database {path}: {e}") from None
    except OSError as e:
        raise StoreError(f"database {path}: {e.strerror}") from None
    return node


def known_senders(path):
    """{(sender, stream): next sequence number expected} from tinymq_rx."""
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute("SELECT sender, stream, next_seq FROM tinymq_rx").fetchall()
    finally:
        conn.close()
    return {(sender, stream): next_seq for sender, stream, next_seq in rows}


def recent_senders(path, days):
    """(sender node, host, port) of the peers that sent to us within `days`."""
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute("SELECT DISTINCT sender, shost, sport FROM tinymq_rx "
                            "WHERE seen > datetime('now', ?)", (f"-{days} days",)).fetchall()
    finally:
        conn.close()
    return [(sender, shost.decode("utf-8", "replace") if isinstance(shost, bytes) else shost,
             sport) for sender, shost, sport in rows]


def _columns(conn, table):
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _upgrade(conn):
    for table, needed in REQUIRED.items():
        missing = [c for c in needed if c not in _columns(conn, table)]
        if missing:
            raise sqlite3.DatabaseError(
                f"table {table} has no column {', '.join(missing)} "
                f"(made by another program? rename the table and restart)")
    for table, extra in (("mqout", DAEMON_COLUMNS), ("mqin", MQIN_EXTRA)):
        present = _columns(conn, table)
        for column, kind in extra.items():
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _node_id(conn):
    row = conn.execute("SELECT value FROM tinymq_meta WHERE key='node_id'").fetchone()
    if row and isinstance(row[0], int) and row[0] > 0:
        return row[0]
    node = secrets.randbits(63) or 1
    conn.execute("INSERT OR REPLACE INTO tinymq_meta (key, value) VALUES ('node_id', ?)",
                 (node,))
    return node
