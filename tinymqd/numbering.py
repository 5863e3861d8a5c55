"""How mqout rows get their stream and sequence number: the one rule for a row that can
be sent, the triggers that number rows as applications insert or change them, and
numbering rows in bulk (rows from before tinymqd, rows an application fixed).

A stream is the sequence of rows for one destination (host, port) numbered during one
run of tinymqd: its id is random (63 bits), and every start of tinymqd opens new ones
(identity.py). Rows keep the number of the stream they were numbered in, so a stream
is never numbered twice, even in a copied or restored database. Rows to a destination
go out stream after stream, in the order the streams were opened, each in the order
of its numbers, which is the order of x.

The triggers number a row in the inserting transaction itself: a row is never without
its number, numbers follow the order of x, and the daemon's writer never rewrites the
rows applications insert (its transactions stay short). A row whose host or port cannot
be used stays unnumbered. An UPDATE that really changes a row's destination numbers it
afresh, at the end of the new destination's stream, clears its last_error, and notes
the move in tinymq_moved so that the scheduler sees it at once; an UPDATE that changes
nothing of where the row goes changes nothing.

Rows are addressed by (host, port), or by tinymq.pl's (dhost, dport) when host is NULL.
"""

from tinymqd.constants import DEFAULT_PORT

# A random positive 63-bit stream id (never 0).
_RANDOM_ID = "max(1, random() & 9223372036854775807)"


def _int_like(value):
    """SQL: text of digits as the integer it spells (tinymq.pl's dport has no type)."""
    return (f"CASE WHEN typeof({value}) = 'text' AND {value} <> '' "
            f"AND {value} NOT GLOB '*[^0-9]*' AND length({value}) < 10 "
            f"THEN CAST({value} AS INTEGER) ELSE {value} END")


def _by_dhost(row):
    return f"({row}.host IS NULL AND {row}.dhost IS NOT NULL)"


def dest_host(row):
    return f"trim(coalesce({row}.host, {row}.dhost), ' []')"


def _given_port(row):
    return f"CASE WHEN {_by_dhost(row)} THEN {_int_like(row + '.dport')} ELSE {row}.port END"


def dest_port(row):
    return f"coalesce({_given_port(row)}, {DEFAULT_PORT})"


def row_problem(row):
    """SQL: why the row cannot be sent (the text its last_error gets), NULL if it can.
    This is the one rule: the triggers number exactly the rows it finds no problem in."""
    port = _given_port(row)
    return (f"CASE WHEN coalesce({dest_host(row)}, '') = '' "
            f"THEN 'host is empty: set it to a name or an IP address' "
            f"WHEN NOT ({port} IS NULL OR (typeof({port}) = 'integer' "
            f"AND {port} BETWEEN 1 AND 65535)) "
            f"THEN 'port ' || quote({port}) || ' is not a number from 1 to 65535' END")


def _usable(row):
    return f"({row_problem(row)}) IS NULL"


_OPEN = "open IS NOT NULL"
_NODE = "(SELECT value FROM tinymq_meta WHERE key = 'node_id')"
_OPENED = "(SELECT coalesce(max(opened), 0) + 1 FROM tinymq_streams)"


def _number(row):
    host, port = dest_host(row), dest_port(row)
    target = f"host = {host} AND port = {port} AND {_OPEN}"
    return f"""
    INSERT INTO tinymq_streams (id, host, port, next_seq, node, open, opened)
        SELECT {_RANDOM_ID}, {host}, {port}, 1, {_NODE}, 1, {_OPENED}
        WHERE NOT EXISTS (SELECT 1 FROM tinymq_streams WHERE {target});
    UPDATE mqout SET (stream, seq) = (
        SELECT id, next_seq FROM tinymq_streams WHERE {target}) WHERE x = {row}.x;
    UPDATE tinymq_streams SET next_seq = next_seq + 1 WHERE {target};
"""


_MOVED = """INSERT INTO tinymq_moved (stream, seq)
    SELECT stream, seq FROM mqout WHERE x = NEW.x AND stream IS NOT NULL;"""
_UNNUMBER = "UPDATE mqout SET stream = NULL, seq = NULL WHERE x = NEW.x;"
_CLEAR_ERROR = "UPDATE mqout SET last_error = NULL WHERE x = NEW.x;"
# The destination really changed (an UPDATE may set the same values again).
_MOVES = (f"({dest_host('NEW')} IS NOT {dest_host('OLD')} "
          f"OR {dest_port('NEW')} IS NOT {dest_port('OLD')} "
          f"OR NEW.stream IS NULL)")
_CHANGED = "AFTER UPDATE OF host, port, dhost, dport ON mqout"


def triggers(journal_inserts=False):
    """name -> definition. journal_inserts: also note inserted rows in tinymq_moved,
    for a table whose x may be reused (tinymq.pl's mqout has no AUTOINCREMENT), where
    looking for rows above the last x seen would miss some."""
    return {
        "tinymq_number_new": (f"AFTER INSERT ON mqout WHEN {_usable('NEW')} BEGIN "
                              f"{_number('NEW')} {_MOVED if journal_inserts else ''} END"),
        "tinymq_unusable_new": (f"AFTER INSERT ON mqout WHEN NEW.stream IS NOT NULL "
                                f"AND NOT ({_usable('NEW')}) BEGIN {_UNNUMBER} END"),
        "tinymq_number_changed": (f"{_CHANGED} WHEN {_usable('NEW')} AND {_MOVES} BEGIN "
                                  f"{_number('NEW')} {_CLEAR_ERROR} {_MOVED} END"),
        "tinymq_unusable_changed": (f"{_CHANGED} WHEN NOT ({_usable('NEW')}) "
                                    f"BEGIN {_UNNUMBER} END"),
    }


# Rows that were in mqout before the numbering triggers existed (a database an
# application or tinymq.pl filled before tinymqd first ran). While any is left, the
# numbering triggers stay away, so rows inserted meanwhile wait unnumbered too, and the
# scheduler numbers them all, lowest x first, a small chunk per transaction (staged
# "old_rows"); the transaction that numbers the last of them also creates the triggers
# (create_numbering_triggers). Every row thus gets its number in x order, and start-up
# does not wait.
NUMBERING = ("tinymq_number_new", "tinymq_number_changed")
_OLD = f"m.stream IS NULL AND m.seq IS NULL AND m.last_error IS NULL AND {_usable('m')}"
OLD_ROWS = f"SELECT m.x FROM mqout AS m WHERE {_OLD} AND m.x > ? ORDER BY m.x LIMIT ?"
# Unnumbered usable rows, whatever their last_error (an application fixed them).
_FIXED = f"m.stream IS NULL AND {_usable('m')}"


def bulk_numbering(chosen, where):
    """SQL statements that number the rows `chosen` (a FROM ... JOIN mqout AS m ...
    clause) that match `where`, per destination in x order after the last number of its
    open stream (opened when missing), and clear their last_error. No WITH clause: they
    run inside a trigger."""
    rows = f"{chosen} WHERE {where}"
    target = f"s.host = {dest_host('m')} AND s.port = {dest_port('m')} AND s.{_OPEN}"
    return (
        f"""INSERT INTO tinymq_streams (id, host, port, next_seq, node, open, opened)
            SELECT {_RANDOM_ID}, host, port, 1, {_NODE}, 1, {_OPENED} FROM (
                SELECT DISTINCT {dest_host('m')} AS host, {dest_port('m')} AS port {rows})
            AS d WHERE NOT EXISTS (SELECT 1 FROM tinymq_streams AS s
                                   WHERE s.host = d.host AND s.port = d.port AND s.{_OPEN})""",
        f"""UPDATE mqout SET stream = numbered.stream, seq = numbered.seq,
                             last_error = NULL FROM (
                SELECT m.x AS x, s.id AS stream,
                       s.next_seq - 1 + row_number() OVER (PARTITION BY s.id ORDER BY m.x)
                       AS seq
                {chosen} JOIN tinymq_streams AS s ON {target} WHERE {where}) AS numbered
            WHERE mqout.x = numbered.x""",
        f"""UPDATE tinymq_streams SET next_seq = (
                SELECT max(seq) + 1 FROM mqout WHERE stream = tinymq_streams.id)
            WHERE {_OPEN} AND next_seq <= (
                SELECT max(seq) FROM mqout WHERE stream = tinymq_streams.id)""",
    )


OLD_ROWS_NUMBERING = bulk_numbering(
    "FROM temp.staged_old_rows AS o JOIN mqout AS m ON m.x BETWEEN o.lo AND o.hi", _OLD)
FIXED_ROWS_NUMBERING = bulk_numbering(
    "FROM temp.staged_renumber AS r JOIN mqout AS m ON m.x = r.x", _FIXED)


def numbering_ready(conn):
    """Whether new rows are numbered as they are inserted (no old rows wait)."""
    return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                        "AND name = ?", (NUMBERING[0],)).fetchone()[0] == 1


def create_triggers(conn, names=None):
    """(Re)create the triggers `names` (all when None) in their current definition,
    for this table's layout."""
    journal = not _autoincrement(conn)
    definitions = triggers(journal)
    for name in definitions if names is None else names:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        conn.execute(f"CREATE TRIGGER {name} {definitions[name]}")


def create_numbering_triggers(conn):
    """From now on rows are numbered as they are inserted (after the old ones)."""
    create_triggers(conn, NUMBERING)


def _autoincrement(conn):
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' "
                       "AND name = 'mqout'").fetchone()[0]
    return "AUTOINCREMENT" in sql.upper()
