"""The tables: created when missing (also in an empty file), brought up to date from an
older tinymqd, and taken over from tinymq.pl."""

import sqlite3

from tinymqd.constants import DEFAULT_PORT

TABLES = f"""
CREATE TABLE IF NOT EXISTS mqout (
    x          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         DEFAULT CURRENT_TIMESTAMP,
    host       TEXT,
    port       INTEGER DEFAULT {DEFAULT_PORT},
    token      TEXT,
    data,
    last_error TEXT,
    stream     INTEGER,
    seq        INTEGER,
    dhost      TEXT,
    dport      INTEGER
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
    sent_ts TEXT,
    key     TEXT
);
CREATE TABLE IF NOT EXISTS tinymq_meta (
    key   TEXT PRIMARY KEY,
    value
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
CREATE TABLE IF NOT EXISTS tinymq_moved (
    n      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the scheduler reads above it
    stream INTEGER,
    seq    INTEGER
);
CREATE TABLE IF NOT EXISTS tinymq_holds (
    host  TEXT NOT NULL,
    port  INTEGER,
    since DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (host, port)
)
"""
# Streams (see numbering.py): `node` numbered it, `open` while rows are numbered into it
# (at most one per destination), `opened` orders the streams of a destination.
STREAMS = """
CREATE TABLE IF NOT EXISTS tinymq_streams (
    id       INTEGER PRIMARY KEY,
    host     TEXT NOT NULL,
    port     INTEGER NOT NULL,
    next_seq INTEGER NOT NULL,
    node     INTEGER,
    open     INTEGER,
    opened   INTEGER
)"""
INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS tinymq_streams_open ON tinymq_streams (host, port)
    WHERE open IS NOT NULL;
CREATE INDEX IF NOT EXISTS mqout_stream_seq ON mqout (stream, seq)
"""

# Columns the daemon owns in mqout, and tinymq.pl's way to address a row (dhost, dport);
# added to tables made by an older tinymqd or by tinymq.pl.
MQOUT_COLUMNS = {"host": "TEXT", "port": "INTEGER", "last_error": "TEXT",
                 "stream": "INTEGER", "seq": "INTEGER", "dhost": "TEXT", "dport": "INTEGER"}
MQIN_COLUMNS = {"sender": "TEXT", "seq": "INTEGER", "sent_ts": "TEXT", "key": "TEXT"}
REQUIRED = {"mqout": ("x", "token", "data"), "mqin": ("x", "shost", "sport", "token", "data")}


class ForeignTable(sqlite3.DatabaseError):
    """A table of that name that is not ours and cannot be taken over."""


def create(conn):
    """Create what is missing and bring older layouts up to date. Returns True when
    mqout was tinymq.pl's and is taken over now. Runs inside the caller's transaction."""
    if "stream" in columns(conn, "tinymq_moved") and "n" not in columns(conn, "tinymq_moved"):
        conn.execute("DROP TABLE tinymq_moved")  # notes only; its rowids were reused
    _run(conn, TABLES)
    for table, needed in REQUIRED.items():
        missing = [c for c in needed if c not in columns(conn, table)]
        if missing:
            raise ForeignTable(
                f"table {table} has no column {', '.join(missing)} "
                f"(made by another program? rename the table and restart)")
    present = columns(conn, "mqout")
    taken_over = "stream" not in present and "dhost" in present
    for column, kind in MQOUT_COLUMNS.items():
        if column not in present:
            conn.execute(f"ALTER TABLE mqout ADD COLUMN {column} {kind}")
    if taken_over:
        # tinymq.pl's own numbers mean nothing to us: its rows are numbered afresh, in x
        # order, like any rows from before tinymqd (numbering.OLD_ROWS).
        conn.execute("UPDATE mqout SET seq = NULL")
    present = columns(conn, "mqin")
    for column, kind in MQIN_COLUMNS.items():
        if column not in present:
            conn.execute(f"ALTER TABLE mqin ADD COLUMN {column} {kind}")
    _streams_table(conn)
    _run(conn, INDEXES)
    return taken_over


def _streams_table(conn):
    """tinymq_streams as STREAMS says; an older tinymqd's (one stream per destination
    for ever, UNIQUE (host, port)) is rebuilt: its streams are closed, so new rows go to
    new streams after the rows they hold."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' "
                       "AND name = 'tinymq_streams'").fetchone()
    if row is None:
        conn.execute(STREAMS)
        return
    if "opened" in columns(conn, "tinymq_streams"):
        return
    conn.execute("ALTER TABLE tinymq_streams RENAME TO tinymq_streams_old")
    conn.execute(STREAMS)
    conn.execute("INSERT INTO tinymq_streams (id, host, port, next_seq, node, open, opened) "
                 "SELECT id, host, port, next_seq, "
                 "(SELECT value FROM tinymq_meta WHERE key = 'node_id'), NULL, id "
                 "FROM tinymq_streams_old")
    conn.execute("DROP TABLE tinymq_streams_old")


def columns(conn, table):
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _run(conn, script):
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
