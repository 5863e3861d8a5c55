"""Malformed, truncated, corrupted, oversized and foreign datagrams (and anything starting
with "ACK") are dropped: no row is created, no row is removed, the daemon keeps running and
serving, and the log about them is rate-limited."""

import random
import time

import pytest

from tests.support import db as dbmod, wire
from tests.support.ports import udp_socket
from tests.support.wait import holds_for, wait_until

ACKS = [b"ACK", b"ACK ", b"ACK 1", b"ACK1", b"ACK\n1\n", b"ACK:1:127.0.0.1:9000",
        b"ACK 0", b"ACK *", b"ACK" + bytes(1000), b"ACKACKACK", b"ack 1"]


def garbage(rng, real=()):
    """Datagrams that are not intact tinymq datagrams; `real` are captured real ones to
    truncate, corrupt and extend."""
    out = [b"", b"\x00", b"\xff" * 4, b"hello", b"INSERT INTO mqin VALUES (1);",
           b"GET / HTTP/1.0\r\n\r\n", b"\x00" * 1200, bytes(60000),
           bytes(rng.getrandbits(8) for _ in range(60000))]
    out += ACKS
    out += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 1500))) for _ in range(60)]
    for d in real:
        head = d[:8]
        out.append(head + bytes(rng.getrandbits(8) for _ in range(200)))  # right magic, junk
        out.append(head + bytes(60000))                                   # oversized
        for cut in sorted({1, 2, 3, 4, 8, 12, len(d) // 2, len(d) - 4, len(d) - 1}):
            if 0 < cut < len(d):
                out.append(d[:cut])                                       # truncated
        for _ in range(30):                                               # one bit flipped
            bit = rng.randrange(len(d) * 8)
            b = bytearray(d)
            b[bit // 8] ^= 1 << (bit % 8)
            out.append(bytes(b))
        for _ in range(10):                                               # a byte replaced
            b = bytearray(d)
            i = rng.randrange(len(d))
            b[i] = (b[i] + rng.randrange(1, 256)) % 256
            out.append(bytes(b))
        out.append(d + b"\x00")                                           # extended
        out.append(d + bytes(rng.getrandbits(8) for _ in range(40)))
        out.append(d[: len(d) // 2] + d)                                  # spliced
    return out


def stderr_lines(d):
    return len(d.stderr_text().splitlines())


@pytest.fixture
def victim(start_daemon, make_sink):
    """Daemon A with one row in flight to a peer that never acknowledges (the sink), and
    A's real datagrams captured by that peer."""
    a = start_daemon("a")
    sink = make_sink()
    x = dbmod.enqueue(a.db, "127.0.0.1", sink.port, "inflight", "in flight " * 20)
    wait_until(lambda: sink.count() >= 2, 10, "A sends (and resends) to the mute peer")
    return a, sink, x


@pytest.mark.timeout(60)
def test_garbage_creates_nothing_removes_nothing_and_is_logged_at_a_limited_rate(
        victim, start_daemon):
    a, sink, x = victim
    rng = random.Random(2)
    bad = garbage(rng, real=sink.datagrams()[:3])
    other = udp_socket()
    lines_before = stderr_lines(a)
    sent = 0
    for _round in range(3):
        for d in bad:
            for s in (sink.sock, other):  # from the peer's own address and from a stranger
                try:
                    s.sendto(d, ("127.0.0.1", a.port))
                    sent += 1
                except OSError:
                    pass  # a 60,000-byte datagram may exceed a send buffer; fine
            if sent % 100 == 0:
                time.sleep(0.005)  # stay under the daemon's receive buffer
    holds_for(lambda: a.count("mqin") == 0 and a.count("mqout", "x=?", (x,)) == 1, 1.5,
              "garbage creates no row and removes none (the in-flight one stays)",
              describe=lambda: f"mqin: {a.query('SELECT * FROM mqin')[:3]}")
    a.assert_alive()
    new_lines = stderr_lines(a) - lines_before
    assert new_lines <= 30, (f"{new_lines} log lines for {sent} bad datagrams (not rate-limited):\n"
                             f"{a.stderr_tail(10)}")
    # and legitimate traffic still flows both ways
    b = start_daemon("b")
    dbmod.enqueue_series(b.db, "127.0.0.1", a.port, "legit", 50)
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "legit", 50)
    wait_until(lambda: a.count("mqin", "token='legit'") == 50 and
               b.count("mqin", "token='legit'") == 50, 10, "legit traffic after garbage",
               describe=lambda: dbmod.describe_queues(a.db, b.db))
    assert a.count("mqout", "x=?", (x,)) == 1
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("forged", ACKS, ids=[repr(a[:12]) for a in ACKS])
def test_forged_ack_removes_nothing(victim, forged):
    """tinymq.pl deleted whatever was in flight on any datagram starting with "ACK"."""
    a, sink, x = victim
    for _ in range(5):
        sink.send(forged, ("127.0.0.1", a.port))
        time.sleep(0.01)
    holds_for(lambda: a.count("mqout", "x=?", (x,)) == 1, 1.0, "in-flight row still queued")
    a.assert_alive()
    assert a.count("mqin") == 0


@pytest.mark.timeout(60)
def test_corrupted_and_truncated_datagrams_to_a_receiver_create_no_rows(pair, make_relay):
    """Real datagrams from A to B, captured, then truncated/corrupted/extended, are all
    rejected by B (own checksum; UDP's is optional on IPv4)."""
    a, b = pair
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    forward, reverse = wire.exchange(a, b, relay, "cap", ["small message", "z" * 5000])
    real = forward + reverse
    before = b.count("mqin")
    rng = random.Random(3)
    bad = [d for d in garbage(rng, real=real[:6]) if d not in set(real)]
    sock = udp_socket()
    for i, d in enumerate(bad):
        for target in (b.port, a.port):
            try:
                sock.sendto(d, ("127.0.0.1", target))
            except OSError:
                pass
        if i % 50 == 0:
            time.sleep(0.005)
    holds_for(lambda: b.count("mqin") == before and a.count("mqin") == 0, 1.5,
              "no rows from corrupted datagrams")
    a.assert_alive()
    b.assert_alive()
    a.enqueue(b, "after", "still works")
    wait_until(lambda: b.count("mqin", "token='after'") == 1, 10, "legit message after")
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_reflected_own_datagrams_create_nothing(victim):
    """A's own datagrams (addressed to another node) sent back to A are foreign to A."""
    a, sink, x = victim
    for d in sink.datagrams()[:5]:
        sink.send(d, ("127.0.0.1", a.port))
    holds_for(lambda: a.count("mqin") == 0 and a.count("mqout", "x=?", (x,)) == 1, 1.0,
              "reflection creates and removes nothing",
              describe=lambda: f"mqin={a.query('SELECT shost, sport, token FROM mqin')} "
                               f"mqout={a.query('SELECT x, token FROM mqout')}")
    a.assert_alive()


@pytest.mark.timeout(60)
def test_flood_of_garbage_does_not_stop_delivery(pair):
    """While garbage pours in, a legit message still arrives in reasonable time."""
    a, b = pair
    rng = random.Random(4)
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 1400))) for _ in range(200)]
    sock = udp_socket()
    lines_before = stderr_lines(b)
    deadline = time.monotonic() + 3
    sent = 0
    t_send = None
    while time.monotonic() < deadline:
        for d in junk[:50]:
            sock.sendto(d, ("127.0.0.1", b.port))
            sent += 1
        if t_send is None and sent > 2000:
            t_send = time.monotonic()
            a.enqueue(b, "during", "during the flood")
        time.sleep(0.002)
    wait_until(lambda: b.count("mqin", "token='during'") == 1, 10, "legit message during flood")
    assert b.count("mqin") == 1
    new_lines = stderr_lines(b) - lines_before
    assert new_lines <= 30, f"{new_lines} log lines for {sent} bad datagrams:\n{b.stderr_tail(10)}"
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_datagrams_for_another_node_create_nothing(start_daemon, make_relay):
    """Intact datagrams from A to B (captured on the way), replayed to a third daemon C:
    they are addressed to B, so C must not store them (nor acknowledge them away)."""
    a, b, c = start_daemon("a"), start_daemon("b"), start_daemon("c")
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    wire.exchange(a, b, relay, "warm", ["warm-up: A learns who B is"])
    relay.reset_stats()
    captured, _ = wire.exchange(a, b, relay, "for-b", [f"for-b-{i:06d}" for i in range(1, 21)])
    sock = udp_socket()
    for d in captured:
        sock.sendto(d, ("127.0.0.1", c.port))
    holds_for(lambda: c.count("mqin") == 0, 1.5, "C stores nothing addressed to B",
              describe=lambda: f"C's mqin: {c.count('mqin')} rows, e.g. "
                               f"{c.query('SELECT shost, sport, token, data FROM mqin LIMIT 2')}")
    assert b.count("mqin", "token='for-b'") == 20


@pytest.mark.timeout(60)
def test_replayed_old_acks_remove_nothing(pair, make_relay):
    """Real acknowledgements captured earlier, replayed while a newer message is in flight,
    must not remove it: an ack removes only the exact message it names."""
    a, b = pair
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    _, reverse = wire.exchange(a, b, relay, "old", [f"old-{i:06d}" for i in range(1, 6)])
    acks = [d for d in reverse if wire.problem(d) is None and wire.fields(d)["type"] == wire.ACK]
    # A deletes a row only on an acknowledgement, and B sends those to where the DATA
    # came from: the relay. So it has captured them all.
    assert acks, f"no acknowledgement among the {len(reverse)} datagrams B sent back"
    relay.set_faults("forward", loss=100)
    x = a.enqueue(relay.port, "new", "in flight, not yet delivered")
    wait_until(lambda: relay.snapshot()["forward"]["dropped"] >= 1, 5, "A sent it (dropped)")
    for _ in range(3):
        for d in acks:
            relay.send_from_listening_port(d, ("127.0.0.1", a.port))  # where A sends to
        time.sleep(0.05)
    holds_for(lambda: a.count("mqout", "x=?", (x,)) == 1, 1.0,
              "the in-flight row survives replayed acks")
    relay.set_faults("forward", loss=0)
    wait_until(lambda: b.count("mqin", "token='new'") == 1 and a.count("mqout") == 0, 10,
               "delivered once the link is back")
    holds_for(lambda: b.count("mqin") == 6, 0.5, "exactly once")
