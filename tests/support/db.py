"""The application side of tinymq: the real `sqlite3` CLI to enqueue, read-only SQLite to look."""

import os
import re
import sqlite3
import subprocess
import tempfile
import time

SQLITE3 = os.environ.get("TINYMQ_TEST_SQLITE3", "/usr/bin/sqlite3")
LARGE = 1 << 20  # data above this goes through a file and readfile()


def sql_literal(value):
    """An SQL literal for value: NULL, integer, real, 'text' (quotes doubled) or X'blob'."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "X'" + bytes(value).hex().upper() + "'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def text_expr(value):
    """An SQL expression for a TEXT value that survives any shell or line mangling:
    CAST(X'<utf-8 hex>' AS TEXT). typeof() of the result is 'text'."""
    if value is None:
        return "NULL"
    return "CAST(" + sql_literal(value.encode("utf-8")) + " AS TEXT)"


def sqlite_cli(db, sql, timeout_ms=5000, check=True, timeout=120):
    """Run SQL with the real sqlite3 CLI (SQL on stdin); return stdout.

    timeout_ms is the CLI's busy timeout (.timeout); None runs the CLI exactly as a
    user would, without one.
    """
    args = [SQLITE3]
    if timeout_ms is not None:
        args += ["-cmd", f".timeout {int(timeout_ms)}"]
    args.append(str(db))
    proc = subprocess.run(args, input=sql.encode("utf-8"), capture_output=True, timeout=timeout)
    if check and (proc.returncode != 0 or proc.stderr.strip()):
        raise AssertionError(
            f"sqlite3 {db} failed (rc={proc.returncode}): {proc.stderr.decode(errors='replace').strip()}\n"
            f"SQL: {sql[:300]!r}")
    return proc.stdout.decode("utf-8", errors="replace")


def _data_expr(data, tmpdir):
    """SQL for data. Large values are written to a file and read with readfile()."""
    if data is None:
        return "NULL", None
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) <= LARGE:
        return (text_expr(data) if isinstance(data, str) else sql_literal(raw)), None
    fd, path = tempfile.mkstemp(prefix="tmq-data-", dir=tmpdir)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    expr = f"readfile({sql_literal(path)})"
    if isinstance(data, str):
        expr = f"CAST({expr} AS TEXT)"
    return expr, path


def enqueue(db, host, port, token, data, literal=False, timeout_ms=5000):
    """INSERT one row into mqout with the sqlite3 CLI; return its x.

    Text goes in as CAST(X'..' AS TEXT) unless literal=True ('...' with quotes doubled,
    as a user would write it). port is passed as given: a str becomes a quoted literal
    ('9000', as in README.md), an int a number.
    """
    if literal and isinstance(data, str):
        data_sql, path = sql_literal(data), None
    else:
        data_sql, path = _data_expr(data, None)
    token_sql = sql_literal(token) if (literal or token is None) else text_expr(token)
    sql = (f"INSERT INTO mqout (host,port,token,data) VALUES "
           f"({sql_literal(host)},{sql_literal(port)},{token_sql},{data_sql});\n"
           f"SELECT last_insert_rowid();\n")
    try:
        out = sqlite_cli(db, sql, timeout_ms=timeout_ms)
    finally:
        if path:
            os.unlink(path)
    return int(out.strip().splitlines()[-1])


def enqueue_many(db, rows, timeout_ms=5000):
    """INSERT many (host, port, token, data) rows in one transaction, one CLI call.
    Returns the list of their x, in order."""
    parts = ["BEGIN IMMEDIATE;", "CREATE TEMP TABLE _new(x INTEGER);"]
    paths = []
    for host, port, token, data in rows:
        data_sql, path = _data_expr(data, None)
        if path:
            paths.append(path)
        parts.append(f"INSERT INTO mqout (host,port,token,data) VALUES ({sql_literal(host)},"
                     f"{sql_literal(port)},{text_expr(token) if token is not None else 'NULL'},"
                     f"{data_sql});")
        parts.append("INSERT INTO temp._new VALUES (last_insert_rowid());")
    parts.append("COMMIT;")
    parts.append("SELECT x FROM temp._new ORDER BY rowid;")
    try:
        out = sqlite_cli(db, "\n".join(parts) + "\n", timeout_ms=timeout_ms)
    finally:
        for path in paths:
            os.unlink(path)
    return [int(line) for line in out.split()]


def series_sql(host, port, tag, count, start=1, pad=0):
    """One INSERT statement (a recursive CTE) of `count` rows with token=tag and data
    '<tag>-<i:06d>' (plus `pad` dots), i = start .. start+count-1, in that order of x."""
    end = start + count - 1
    padding = f" || substr(replace(hex(zeroblob({pad})), '00', '..'), 1, {pad})" if pad else ""
    return (f"WITH RECURSIVE c(i) AS (SELECT {start} UNION ALL SELECT i+1 FROM c WHERE i<{end}) "
            f"INSERT INTO mqout (host,port,token,data) "
            f"SELECT {sql_literal(host)}, {sql_literal(port)}, {sql_literal(tag)}, "
            f"printf('%s-%06d', {sql_literal(tag)}, i){padding} FROM c ORDER BY i")


def enqueue_series(db, host, port, tag, count, start=1, pad=0, timeout_ms=10000):
    """series_sql() run by the sqlite3 CLI. Returns (first x, last x)."""
    sql = series_sql(host, port, tag, count, start, pad) + ";\nSELECT last_insert_rowid();\n"
    last = int(sqlite_cli(db, sql, timeout_ms=timeout_ms).strip().splitlines()[-1])
    return last - count + 1, last


def insert_series(db, host, port, tag, count, start=1, pad=0):
    """series_sql() run by Python's sqlite3 module, as an application library would (it
    waits up to 30 s for the lock). Returns (first x, last x) once committed."""
    con = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    try:
        con.execute(series_sql(host, port, tag, count, start, pad))
        (last,) = con.execute("SELECT last_insert_rowid()").fetchone()
    finally:
        con.close()
    return last - count + 1, last


def plain_insert(db, host, port, token, data):
    """One INSERT exactly as README.md shows it and users type it: `sqlite3 DB "INSERT
    ..."` with the port as a string and no busy timeout (.timeout). Returns '' when it
    worked, else what sqlite3 said (e.g. "database is locked")."""
    sql = (f"INSERT into mqout (host,port,token,data) VALUES ({sql_literal(host)},"
           f"{sql_literal(str(port))},{sql_literal(token)},{sql_literal(data)});")
    proc = subprocess.run([SQLITE3, str(db), sql], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or proc.stderr.strip():
        return proc.stderr.strip() or f"sqlite3 exited with {proc.returncode}"
    return ""


def plain_inserts(db, targets, most, until=None, least=0, pause=None):
    """plain_insert() one after another into db's mqout, to ("127.0.0.1", port) with
    token tag for (port, tag) in `targets` in turn: `most` of them, or fewer once at
    least `least` were tried and until() is true (asked every 10). pause(), when given,
    says how long to wait after each (the pace). The rows that went in are numbered per
    tag: data '<tag>-<i:06d>', i = 1, 2, ... Returns (tried, failures: what sqlite3
    said, {tag: rows that went in})."""
    failures = []
    done = {tag: 0 for _port, tag in targets}
    tried = 0
    while tried < most and (until is None or tried < least or tried % 10 or not until()):
        port, tag = targets[tried % len(targets)]
        tried += 1
        error = plain_insert(db, "127.0.0.1", port, tag, f"{tag}-{done[tag] + 1:06d}")
        if error:
            failures.append(error)
        else:
            done[tag] += 1
        if pause is not None:
            time.sleep(pause())  # the application's pace
    return tried, failures, done


APP_TABLES = """
CREATE TABLE mqout (x INTEGER PRIMARY KEY AUTOINCREMENT, ts DEFAULT CURRENT_TIMESTAMP,
                    host TEXT, port INTEGER DEFAULT 9000, token TEXT, data, last_error TEXT);
CREATE TABLE mqin (x INTEGER PRIMARY KEY AUTOINCREMENT, ts DEFAULT CURRENT_TIMESTAMP,
                   shost TEXT, sport INTEGER, token TEXT, data);
"""


def make_app_database(path, wal=False):
    """mqout and mqin as README.md describes them, made by an application (or tinymq.pl)
    before tinymqd first runs on the database: nothing of the daemon's in it yet."""
    con = sqlite3.connect(str(path))
    try:
        if wal:
            con.execute("PRAGMA journal_mode=WAL")
        con.executescript(APP_TABLES)
    finally:
        con.close()


def connect_ro(db):
    """A read-only connection (closed by the caller). Never holds a transaction open."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10, isolation_level=None)
    return con


def max_x(con, table="mqin"):
    """The highest x in table (0 when empty) through an open connection: cheap enough to
    poll while a transfer is timed."""
    return con.execute(f"SELECT coalesce(max(x), 0) FROM {table}").fetchone()[0]


def query(db, sql, params=(), consume=list):
    """consume(rows) of a read-only query (a list of the rows by default); [] when the
    database or table does not exist yet."""
    if not os.path.exists(db):
        return []
    con = connect_ro(db)
    try:
        return consume(con.execute(sql, params))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        con.close()


def scalar(db, sql, params=()):
    rows = query(db, sql, params)
    return rows[0][0] if rows else None


def count(db, table, where="1", params=()):
    return scalar(db, f"SELECT count(*) FROM {table} WHERE {where}", params) or 0


def tables(db):
    return {r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type='table'")}


def columns(db, table):
    return [r[1] for r in query(db, f"PRAGMA table_info({table})")]


_NUMBER = re.compile(r"\d+")


def numbers_in(rows, tag):
    """The numbers i of data '<tag>-<i>...' (str or bytes; i in decimal, zero-padded, then
    anything) in rows of (data,), in the rows' order."""
    out = []
    prefix = tag + "-"
    for (data,) in rows:
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        m = isinstance(data, str) and data.startswith(prefix) and _NUMBER.match(data, len(prefix))
        assert m, f"unexpected row data {str(data)[:80]!r} (expected {prefix!r} and a number)"
        out.append(int(m.group()))
    return out


def series_numbers(db, tag, table="mqin"):
    """The numbers i of the rows '<tag>-<i>...' with token=tag in table, in order of x."""
    # Only the head of each row, and row by row: a series may have a million rows.
    return query(db, f"SELECT substr(data, 1, {len(tag) + 30}) FROM {table} WHERE token=? "
                     "ORDER BY x", (tag,), consume=lambda rows: numbers_in(rows, tag))


def describe_queues(*dbs):
    """'a.db: mqout=.. mqin=..' for wait_until(describe=...)."""
    parts = []
    for db in dbs:
        try:
            parts.append(f"{os.path.basename(os.path.dirname(str(db)))}: mqout={count(db, 'mqout')} "
                         f"mqin={count(db, 'mqin')} errors="
                         f"{count(db, 'mqout', 'last_error IS NOT NULL')}")
        except Exception as exc:
            parts.append(f"{db}: {exc!r}")
    return "; ".join(parts)
