"""Rows that cannot be sent are kept with last_error and block nobody."""

import pytest

from tests.support import db as dbmod
from tests.support.wait import holds_for, wait_until

SMALL_MAX = 100000  # max_message for the cheap "too large" cases

# id, SQL for host, SQL for port ({B} = receiver B's port), SQL for data, max_message config
BAD_ROWS = [
    ("host-null", "NULL", "{B}", "'x'", None),
    ("host-empty", "''", "{B}", "'x'", None),
    ("host-unresolvable", "'no-such-host.invalid'", "{B}", "'x'", None),
    ("host-garbage", "'not a host name!'", "{B}", "'x'", None),
    ("port-70000", "'127.0.0.1'", "70000", "'x'", None),
    ("port-abc", "'127.0.0.1'", "'abc'", "'x'", None),
    ("port-zero", "'127.0.0.1'", "0", "'x'", None),
    ("port-negative", "'127.0.0.1'", "-1", "'x'", None),
    ("port-real", "'127.0.0.1'", "9000.5", "'x'", None),
    # TEXT that is not UTF-8 (a Latin-1 application): quoted into last_error, replaced
    ("port-not-utf8", "'127.0.0.1'", "CAST(X'e9' AS TEXT)", "'x'", None),
    ("host-not-utf8", "CAST(X'68e96c6c6f' AS TEXT)", "{B}", "'x'", None),
    ("too-large-blob", "'127.0.0.1'", "{B}", f"zeroblob({SMALL_MAX + 1})", SMALL_MAX),
    ("too-large-text", "'127.0.0.1'", "{B}",
     f"substr(replace(hex(zeroblob({SMALL_MAX})), '0', 'x'), 1, {SMALL_MAX + 1})", SMALL_MAX),
    ("too-large-default-16MiB+1", "'127.0.0.1'", "{B}", f"zeroblob({16 * 1024 * 1024 + 1})", None),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,host,port,data,max_message", BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_bad_row_gets_last_error_and_blocks_nobody(make_daemon, case, host, port, data,
                                                   max_message):
    config = {} if max_message is None else {"max_message": max_message}
    a = make_daemon("a", **config).start()
    b, c = make_daemon("b").start(), make_daemon("c").start()
    out = dbmod.sqlite_cli(a.db, f"INSERT INTO mqout (host,port,token,data) VALUES "
                                 f"({host},{port.format(B=b.port)},'bad',{data});"
                                 f"SELECT last_insert_rowid();")
    bad = int(out.split()[-1])
    # good rows after it: to the same destination and to another one
    a.enqueue(b, "good", "after the bad row, same destination")
    a.enqueue(c, "good", "after the bad row, other destination")
    wait_until(lambda: b.count("mqin", "token='good'") == 1 and
               c.count("mqin", "token='good'") == 1, 5, "good rows not blocked by the bad one",
               describe=lambda: dbmod.describe_queues(a.db, b.db, c.db))
    wait_until(lambda: a.query("SELECT last_error FROM mqout WHERE x=? AND last_error IS NOT NULL"
                               " AND last_error != ''", (bad,)), 5,
               "the bad row gets last_error",
               describe=lambda: f"{a.query('SELECT x, host, port, last_error FROM mqout')}")
    a.assert_alive()
    assert b.count("mqin", "token='bad'") == 0 and c.count("mqin", "token='bad'") == 0
    print("last_error:", a.query("SELECT last_error FROM mqout WHERE x=?", (bad,)))
    # later good rows still flow, the bad row stays
    a.enqueue(b, "good", "later")
    wait_until(lambda: b.count("mqin", "token='good'") == 2, 5, "later good row delivered")
    assert a.count("mqout", "x=?", (bad,)) == 1, "the bad row must be kept"
    for d in (a, b, c):
        d.stop()


@pytest.mark.timeout(60)
def test_all_bad_rows_at_once_and_restart(make_daemon):
    """tinymq.pl died on an unresolvable host, and again at every restart."""
    a = make_daemon("a", max_message=SMALL_MAX).start()
    b = make_daemon("b").start()
    for _case, host, port, data, _m in BAD_ROWS:
        dbmod.sqlite_cli(a.db, f"INSERT INTO mqout (host,port,token,data) VALUES "
                               f"({host},{port.format(B=b.port)},'bad',{data});")
    a.enqueue(b, "good", "good-000001")
    wait_until(lambda: b.count("mqin", "token='good'") == 1, 5, "good row delivered")
    wait_until(lambda: a.count("mqout", "token='bad' AND last_error IS NOT NULL") == len(BAD_ROWS),
               5, "every bad row has last_error",
               describe=lambda: f"{a.query('SELECT host, port, length(data), last_error FROM mqout')}")
    a.restart()
    a.enqueue(b, "good", "good-000002")
    wait_until(lambda: b.count("mqin", "token='good'") == 2, 5, "good row delivered after restart")
    holds_for(lambda: a.running, 1.0, "daemon stays up with the bad rows")
    assert a.count("mqout", "token='bad'") == len(BAD_ROWS)
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_port_as_string_digits_is_fine(pair):
    """'9000' as a string (as README.md writes it) is not a bad port."""
    a, b = pair
    dbmod.sqlite_cli(a.db, f"INSERT INTO mqout (host,port,token,data) VALUES "
                           f"('127.0.0.1','{b.port}','t','string port');")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered",
               describe=lambda: f"{a.query('SELECT port, last_error FROM mqout')}")
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_a_bad_row_the_application_fixes_is_delivered(make_daemon):
    """UPDATE of host, port or data makes a kept row sendable: it then goes, once."""
    a = make_daemon("a", max_message=SMALL_MAX).start()
    b = make_daemon("b").start()
    rows = {"fix-host": ("''", b.port, "'fix-host'"),
            "fix-port": ("'127.0.0.1'", "'abc'", "'fix-port'"),
            "fix-size": ("'127.0.0.1'", b.port, f"zeroblob({SMALL_MAX + 1})")}
    for token, (host, port, data) in rows.items():
        dbmod.sqlite_cli(a.db, f"INSERT INTO mqout (host,port,token,data) "
                               f"VALUES ({host},{port},'{token}',{data});")
    wait_until(lambda: a.count("mqout", "last_error IS NOT NULL") == 3, 10,
               "every bad row has last_error",
               describe=lambda: f"{a.query('SELECT token, last_error FROM mqout')}")
    dbmod.sqlite_cli(a.db, "UPDATE mqout SET host = '127.0.0.1' WHERE token = 'fix-host';"
                           f"UPDATE mqout SET port = {b.port} WHERE token = 'fix-port';"
                           "UPDATE mqout SET data = 'fix-size' WHERE token = 'fix-size';")
    wait_until(lambda: a.count("mqout") == 0 and b.count("mqin") == 3, 20,
               "the fixed rows delivered",
               describe=lambda: f"{a.query('SELECT token, stream, seq, last_error FROM mqout')}")
    assert sorted(b.query("SELECT token, data FROM mqin")) == [
        ("fix-host", "fix-host"), ("fix-port", "fix-port"), ("fix-size", "fix-size")]
    holds_for(lambda: b.count("mqin") == 3, 1.0, "no duplicates")
    a.stop()
    b.stop()
