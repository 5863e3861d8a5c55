"""Switching from tinymq.pl: `tinymqd 9000 /var/tmp/tinymqdb` on the file tinymq.pl made
(SPEC "Tables": a database created by tinymq.pl is taken over). Before, tinymqd refused to
start on it ("table mqout has no column host, port")."""

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.wait import holds_for

# The tables as tinymq.pl created them: mqout without AUTOINCREMENT (x is reused once
# the table is empty), no types but x's, destinations in dhost/dport.
PERL_TABLES = """
CREATE TABLE mqout (x INTEGER PRIMARY KEY, ts, shost, sport, dhost, dport, token, data, seq,
                    backoff, magic UNIQUE);
CREATE TABLE mqin (x INTEGER PRIMARY KEY AUTOINCREMENT, ts, shost, sport, dhost, dport, token,
                   data, seq, magic UNIQUE);
"""


def perl_database(path, queued=(), me=("hostA", 9000)):
    """A database as tinymq.pl left it, made with the sqlite3 CLI: its tables and the
    rows it still had queued, (dhost, dport as text, token, data) each, filled as the
    Perl did (ts, its own address, its sequence number, no backoff yet, a unique magic)."""
    rows = [f"(datetime('now'), {dbmod.sql_literal(me[0])}, '{me[1]}', "
            f"{dbmod.sql_literal(dhost)}, {dbmod.sql_literal(str(dport))}, "
            f"{dbmod.sql_literal(token)}, {dbmod.sql_literal(data)}, {seq}, 0, "
            f"'{me[0]}:{me[1]}:1764590000:{seq}')"
            for seq, (dhost, dport, token, data) in enumerate(queued, 1)]
    sql = PERL_TABLES
    if rows:
        sql += ("INSERT INTO mqout (ts, shost, sport, dhost, dport, token, data, seq, "
                "backoff, magic) VALUES " + ",\n".join(rows) + ";\n")
    dbmod.sqlite_cli(path, sql)


def perl_insert(db, dhost, dport, token, data):
    """An INSERT written for tinymq.pl; returns its x."""
    out = dbmod.sqlite_cli(db, f"INSERT INTO mqout (dhost,dport,token,data) VALUES "
                               f"({dbmod.sql_literal(dhost)},{dbmod.sql_literal(str(dport))},"
                               f"{dbmod.sql_literal(token)},{dbmod.sql_literal(data)});\n"
                               "SELECT last_insert_rowid();\n")
    return int(out.split()[-1])


def start_positional(daemon):
    """`tinymqd PORT DATABASE`, as tinymq.pl was run: no config file."""
    return daemon.start(args=[daemon.port, daemon.db], use_config=False)


@pytest.mark.timeout(60)
def test_tinymq_pl_databases_are_taken_over(make_daemon, tmp_path):
    """Both hosts run tinymqd on the files tinymq.pl made: A's queued rows are delivered in
    order into B's mqin (also tinymq.pl's), and INSERTs in either form go on working."""
    a = make_daemon("a", database=tmp_path / "a" / "tinymqdb")
    b = make_daemon("b", database=tmp_path / "b" / "tinymqdb")
    queued = [("127.0.0.1", b.port, "pl", f"pl-{i:06d}") for i in range(1, 6)]
    perl_database(a.db, queued)
    perl_database(b.db, me=("hostB", 9000))
    start_positional(a)
    # Right after the start, while the queued rows are numbered, and B is still down (so
    # mqout does not run empty, see the next test): tinymq.pl's INSERT, then the README's.
    perl_insert(a.db, "127.0.0.1", b.port, "pl", "pl-000006")
    dbmod.enqueue(a.db, "127.0.0.1", str(b.port), "pl", "pl-000007")
    perl_insert(a.db, "127.0.0.1", b.port, "pl", "pl-000008")
    start_positional(b)
    assert_series_delivered(a, b, "pl", 8, 15)
    assert set(b.query("SELECT shost, sport FROM mqin")) == {("127.0.0.1", a.port)}
    # Restarted (mqout is empty now: tinymq.pl's table gives x = 1 again).
    a.stop()
    start_positional(a)
    perl_insert(a.db, "127.0.0.1", b.port, "pl", "pl-000009")
    dbmod.enqueue(a.db, "127.0.0.1", b.port, "pl", "pl-000010")
    assert_series_delivered(a, b, "pl", 10, 10)
    holds_for(lambda: a.running and b.running, 0.5, "both stay up")
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_tinymq_pl_mqout_that_ran_empty_reuses_x_and_still_delivers(make_daemon, tmp_path):
    """tinymq.pl's mqout has no AUTOINCREMENT: once every row is delivered, the next INSERT
    gets x = 1 again, and the one after that too (x = 1 is delivered and deleted first).
    Each is delivered in the same run, within seconds, like any row."""
    a = make_daemon("a", database=tmp_path / "a" / "tinymqdb")
    b = make_daemon("b").start()
    perl_database(a.db, [("127.0.0.1", b.port, "pl", "pl-000001")])
    start_positional(a)
    assert_series_delivered(a, b, "pl", 1, 15)  # numbered: new rows are noted from now on
    perl_insert(a.db, "127.0.0.1", b.port, "pl", "pl-000002")
    assert_series_delivered(a, b, "pl", 2, 10)
    x = perl_insert(a.db, "127.0.0.1", b.port, "pl", "pl-000003")
    assert x == 1, f"premise: an empty tinymq.pl mqout reuses x (got x={x})"
    assert_series_delivered(a, b, "pl", 3, 5)
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_tinymq_pl_rows_to_an_unusable_port_wait_and_block_nobody(make_daemon, tmp_path):
    """tinymq.pl's dport is untyped: a row with a port that is no number keeps a
    last_error, the rows after it are delivered."""
    a = make_daemon("a", database=tmp_path / "a" / "tinymqdb")
    b = make_daemon("b").start()
    perl_database(a.db, [("127.0.0.1", b.port, "pl", "pl-000001"),
                         ("127.0.0.1", "nine thousand", "bad", "bad-000001"),
                         ("127.0.0.1", b.port, "pl", "pl-000002")])
    start_positional(a)
    perl_insert(a.db, "127.0.0.1", b.port, "pl", "pl-000003")
    assert_series_delivered(a, b, "pl", 3, 15)
    rows = a.query("SELECT last_error FROM mqout WHERE token = 'bad'")
    assert len(rows) == 1 and rows[0][0], f"the bad row is kept with last_error: {rows}"
    a.stop()
    b.stop()
