"""Any content arrives intact, with its type; the README's commands work as written;
no datagram on the wire exceeds max_datagram."""

import hashlib
import json
import socket
import subprocess

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.daemon import Daemon
from tests.support.ports import ipv6_loopback_available
from tests.support.wait import holds_for, wait_until

MiB = 1 << 20


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """One sender and one receiver shared by the content tests (started once)."""
    base = tmp_path_factory.mktemp("content")
    a, b = Daemon(base, "a"), Daemon(base, "b")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for d in (a, b):
            d.cleanup()


def deliver(a, b, token, data, timeout=15, **kw):
    """Enqueue one row a -> b, wait until it left a and exactly one new row is in b's mqin;
    return that row as (token, typeof(data), data, shost, sport)."""
    for d in (a, b):
        d.assert_alive()
    before = dbmod.scalar(b.db, "SELECT coalesce(max(x), 0) FROM mqin") or 0
    x = a.enqueue(b, token, data, **kw)

    def arrived():
        error = a.query("SELECT last_error FROM mqout WHERE x=? AND last_error IS NOT NULL", (x,))
        assert not error, f"row x={x} to a live peer got last_error: {error[0][0]!r}"
        return a.count("mqout", "x=?", (x,)) == 0 and b.count("mqin", "x>?", (before,)) >= 1

    wait_until(arrived, timeout,
               f"row x={x} delivered", describe=lambda: dbmod.describe_queues(a.db, b.db) +
               f"; last_error={a.query('SELECT last_error FROM mqout WHERE x=?', (x,))}")
    rows = b.query("SELECT token, typeof(data), data, shost, sport FROM mqin WHERE x>? ORDER BY x",
                   (before,))
    assert len(rows) == 1, f"expected one new mqin row, got {len(rows)}"
    return rows[0]


def assert_same(got_type, got, data):
    want_type = "null" if data is None else "blob" if isinstance(data, bytes) else "text"
    assert got_type == want_type, f"typeof(data) is {got_type}, expected {want_type}"
    if isinstance(data, (bytes, str)) and len(data) > 2000:
        assert len(got) == len(data), f"length {len(got)} != {len(data)}"
        digest = lambda v: hashlib.sha256(v if isinstance(v, bytes) else v.encode()).hexdigest()
        assert digest(got) == digest(data), "content differs"
    else:
        assert got == data


CONTENT = [
    ("colons", "to:ken:", "a:b::c:::d http://host:80/p?q=1:2 12:34:56 ::1"),
    ("newlines", "tok", "line1\nline2\r\nline3\rline4\n\n"),
    ("quotes", "it's \"q\"", "it's \"quoted\" `back` \\backslash\\ ''doubled'' ;--"),
    ("json", "json", json.dumps({"a": [1, 2.5, None, True], "s": "x:y\n\"z\"", "u": "é✓",
                                 "nested": {"k": {"k": []}}}, ensure_ascii=False)),
    ("json-ascii", "json", json.dumps({"emoji": "😀", "q": "'\""})),
    ("emoji", "😀", "😀🚀👍🏽👨‍👩‍👧‍👦🏳️‍🌈"),
    ("cjk", "中文", "中文字符 日本語のテキスト 한국어 텍스트"),
    ("rtl", "עברית", "שלום עולם — مرحبا بالعالم \u200f\u202etxet\u202c"),
    ("combining", "tok", "e\u0301 a\u0308 \ufeffBOM \u200b zero-width"),
    ("control-chars", "tok", "\t\x01\x07\x1b[31mred\x1b[0m\x7f"),
    ("empty-string", "tok", ""),
    ("empty-token", "", "empty token"),
    ("null-token", None, "no token at all"),
    ("ack-text", "ACK", "ACK 1 2 3"),
    ("sql", "tok", "'); DROP TABLE mqin; --"),
    ("blob-256", "blob", bytes(range(256))),
    ("blob-nuls", "blob", b"\x00" * 100 + b"end"),
    ("blob-empty", "blob", b""),
    ("blob-invalid-utf8", "blob", b"\xff\xfe\xc3\x28\xa0\xa1"),
    ("text-64000", "big", ("0123456789abcdef:" * 4000)[:64000]),
    ("blob-64000", "big", bytes(range(256)) * 250),
]


@pytest.mark.parametrize("token,data", [c[1:] for c in CONTENT], ids=[c[0] for c in CONTENT])
def test_content_arrives_intact_with_its_type(nodes, token, data):
    a, b = nodes
    got_token, got_type, got, shost, sport = deliver(a, b, token, data)
    assert got_token == token
    assert_same(got_type, got, data)
    assert shost == "127.0.0.1" and sport == a.port, (shost, sport)


@pytest.mark.parametrize("data", ["it's got 'quotes' and : colons: {\"json\": 1}",
                                  "Hello", "ünïcödé 中文 😀"],
                         ids=["quotes-colons", "plain", "unicode"])
def test_literal_insert_as_users_write_it(nodes, data):
    """'...' with doubled quotes, straight through the CLI as a user would type it."""
    a, b = nodes
    got_token, got_type, got, _h, _p = deliver(a, b, "lit", data, literal=True)
    assert (got_token, got_type, got) == ("lit", "text", data)


def test_integer_and_real_data_keep_their_type(nodes):
    a, b = nodes
    for value, kind in ((42, "integer"), (-7, "integer"), (2.5, "real")):
        before = dbmod.scalar(b.db, "SELECT coalesce(max(x), 0) FROM mqin")
        dbmod.sqlite_cli(a.db, f"INSERT INTO mqout (host,port,token,data) VALUES "
                               f"('127.0.0.1',{b.port},'num',{value});")
        wait_until(lambda: b.count("mqin", "x>?", (before,)) == 1, 15, f"{value} delivered")
        assert b.query("SELECT typeof(data), data FROM mqin WHERE x>?", (before,)) == [(kind, value)]


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", ["text", "blob"])
def test_16_mib_message(nodes, kind):
    a, b = nodes
    size = 16 * MiB  # the default max_message: must still be delivered
    if kind == "text":
        data = ("The quick brown fox: 0123456789 {json}\n" * (size // 39 + 1))[:size]
    else:
        data = hashlib.shake_256(b"16MiB").digest(size)
    _t, got_type, got, _h, _p = deliver(a, b, f"16mib-{kind}", data, timeout=120)
    assert_same(got_type, got, data)


def test_readme_command_verbatim(start_daemon):
    """echo "INSERT into mqout (host,port,token,data) VALUES ('MachineB','9000','token','Hello');"
    | sqlite3 DB  -- with MachineB = 127.0.0.1 and B's port, given as a string as in README.md."""
    a, b = start_daemon("a"), start_daemon("b")
    cmd = (f"echo \"INSERT into mqout (host,port,token,data) VALUES "
           f"('127.0.0.1','{b.port}','token','Hello');\" | sqlite3 {a.db}")
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    wait_until(lambda: b.count("mqin") == 1, 10, "Hello delivered",
               describe=lambda: dbmod.describe_queues(a.db, b.db))
    out = subprocess.run(f"echo \"SELECT * FROM mqin;\" | sqlite3 {b.db}", shell=True,
                         capture_output=True, text=True, timeout=30)
    assert "Hello" in out.stdout and "token" in out.stdout, out
    assert b.query("SELECT shost, sport, token, data, typeof(data) FROM mqin") == [
        ("127.0.0.1", a.port, "token", "Hello", "text")]
    wait_until(lambda: a.count("mqout") == 0, 5, "mqout row deleted after delivery")
    holds_for(lambda: b.count("mqin") == 1, 1.0, "no duplicate")
    a.stop()
    b.stop()


def test_ids_are_never_reused_and_nothing_is_lost_one_at_a_time(pair):
    """tinymq.pl reused mqout ids once mqout was empty and lost 4 of 5 messages."""
    a, b = pair
    xs = []
    for i in range(1, 6):
        xs.append(a.enqueue(b, "one", f"one-{i:06d}"))
        wait_until(lambda: a.count("mqout") == 0 and b.count("mqin") == i, 10,
                   f"message {i} delivered and mqout empty again")
    assert xs == sorted(set(xs)), f"mqout ids reused: {xs}"
    assert dbmod.series_numbers(b.db, "one") == [1, 2, 3, 4, 5]
    a.stop()
    b.stop()


def test_daemon_can_send_to_itself(start_daemon):
    a = start_daemon("a")
    dbmod.enqueue_series(a.db, "127.0.0.1", a.port, "self", 10)
    assert_series_delivered(a, a, "self", 10, 10)
    assert a.query("SELECT DISTINCT sport FROM mqin") == [(a.port,)]
    a.stop()


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_ipv6_literal_destination(start_daemon):
    a = start_daemon("a", bind="::")
    b = start_daemon("b", bind="::")
    a.assert_alive()
    dbmod.enqueue(a.db, "::1", b.port, "v6", "over IPv6")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered to ::1",
               describe=lambda: dbmod.describe_queues(a.db, b.db) +
               f"; {a.query('SELECT last_error FROM mqout')}")
    assert b.query("SELECT shost, sport, data FROM mqin") == [("::1", a.port, "over IPv6")]
    # IPv4 to a daemon bound to "::" works too
    dbmod.enqueue(a.db, "127.0.0.1", b.port, "v4", "over IPv4")
    wait_until(lambda: b.count("mqin") == 2, 10, "delivered to 127.0.0.1")
    a.stop()
    b.stop()


def test_hostname_destination(start_daemon):
    """host may be a name (localhost, where it resolves to 127.0.0.1)."""
    try:
        found = sorted({ai[4][0] for ai in socket.getaddrinfo("localhost", None, socket.AF_INET)})
    except socket.gaierror as e:
        found = f"does not resolve ({e})"
    if "127.0.0.1" not in found:
        pytest.skip(f"needs 'localhost' to resolve to 127.0.0.1, the receiver's address; "
                    f"on this system it {found if isinstance(found, str) else f'is {found}'}")
    a, b = start_daemon("a"), start_daemon("b")
    dbmod.enqueue(a.db, "localhost", b.port, "name", "by name")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered to localhost",
               describe=lambda: f"{a.query('SELECT host, last_error FROM mqout')}")
    a.stop()
    b.stop()


@pytest.mark.parametrize("max_datagram", [None, 600])
def test_no_datagram_exceeds_max_datagram(make_daemon, make_relay, max_datagram):
    extra = {} if max_datagram is None else {"max_datagram": max_datagram}
    limit = max_datagram or 1200
    a, b = make_daemon("a", **extra).start(), make_daemon("b", **extra).start()
    relay = make_relay(("127.0.0.1", b.port))
    sizes = [1, 500, 1100, 1200, 1300, 5000, 50000, 300000]
    rows = [("127.0.0.1", relay.port, "size", f"{n:08d}" + "z" * (n - 8) if n >= 8 else "s")
            for n in sizes]
    rows.append(("127.0.0.1", relay.port, "size", bytes(200000)))
    dbmod.enqueue_many(a.db, rows)
    wait_until(lambda: b.count("mqin") == len(rows), 30, "all sizes delivered",
               describe=lambda: dbmod.describe_queues(a.db, b.db) + f" relay={relay.snapshot()}")
    st = relay.snapshot()
    assert st["forward"]["max_size"] <= limit, f"datagram of {st['forward']['max_size']} B > {limit}"
    assert st["reverse"]["max_size"] <= limit, f"reply of {st['reverse']['max_size']} B > {limit}"
    got = b.query("SELECT length(data) FROM mqin ORDER BY x")
    assert [g[0] for g in got] == [max(n, 1) if n >= 8 else 1 for n in sizes] + [200000]
    a.stop()
    b.stop()
