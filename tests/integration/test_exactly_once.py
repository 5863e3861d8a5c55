"""Exactly once and in order: bulk, across SIGTERM/SIGKILL of either side, after the
consumer deleted rows, and when a sender starts over with a new database."""

import signal
import time

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.wait import holds_for, wait_until


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_10000_messages_exactly_once_in_order(pair):
    a, b = pair
    t0 = time.monotonic()
    first, last = dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "bulk", 10000)
    assert last - first == 9999
    assert_series_delivered(a, b, "bulk", 10000, 120)
    took = time.monotonic() - t0
    print(f"10,000 messages in {took:.1f} s ({10000 / took:.0f}/s)")
    # mqin order by x matches the sender's order by x
    xs = [r[0] for r in b.query("SELECT x FROM mqin WHERE token='bulk' ORDER BY x")]
    assert xs == sorted(xs)
    a.stop()
    b.stop()


def progress(receiver, tag):
    return receiver.count("mqin", "token=?", (tag,))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("victim", ["sender", "receiver"])
def test_stop_mid_transfer_then_restart_exactly_once_in_order(pair, victim, sig):
    a, b = pair
    n = 20000  # large enough that both kills land mid-transfer at ~12k messages/s
    tag = f"{victim}-{sig.name}"
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, n)
    kills = 0
    for fraction in (0.1, 0.5):
        wait_until(lambda: progress(b, tag) >= n * fraction, 60, f"{fraction:.0%} delivered",
                   interval=0.005, describe=lambda: dbmod.describe_queues(a.db, b.db))
        target = a if victim == "sender" else b
        if sig == signal.SIGKILL:
            target.kill()
        else:
            target.stop(sig)  # asserts exit 0 within 2 s
        left = a.count("mqout", "token=?", (tag,))
        if left:
            kills += 1
        target.start()
    assert kills >= 1, f"transfer finished before any kill could land mid-transfer (n={n})"
    assert_series_delivered(a, b, tag, n, 60)
    a.stop()
    b.stop()


@pytest.mark.timeout(120)
def test_consumer_deletes_mqin_rows_before_sender_restarts(pair):
    """tinymq.pl duplicated messages after the consumer deleted the mqin row."""
    a, b = pair
    n, tag = 10000, "consumed"
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, n)
    wait_until(lambda: progress(b, tag) >= n // 5, 60, "20% delivered", interval=0.005)
    a.kill()
    # the consumer processes and deletes what arrived
    rows = b.query("SELECT x, data FROM mqin WHERE token=? ORDER BY x", (tag,))
    consumed = dbmod.numbers_in([(d,) for _x, d in rows], tag)
    dbmod.sqlite_cli(b.db, f"DELETE FROM mqin WHERE token='{tag}' AND x <= {rows[-1][0]};")
    assert a.count("mqout", "token=?", (tag,)) > 0, "sender finished before the kill"
    # the receiver crashes too: its duplicate suppression must not live in mqin rows
    b.kill()
    b.start()
    a.start()
    assert_series_delivered(a, b, tag, n, 60, consumed=consumed)
    # the consumer deletes everything; a second restart of both must not resend anything
    dbmod.sqlite_cli(b.db, "DELETE FROM mqin;")
    a.restart()
    b.restart()
    holds_for(lambda: b.count("mqin") == 0, 2.0, "nothing re-delivered after restarts")
    a.enqueue(b, tag, f"{tag}-{n + 1:06d}")
    wait_until(lambda: progress(b, tag) == 1, 10, "a new message still goes through")
    a.stop()
    b.stop()


@pytest.mark.timeout(90)
def test_consumer_deleting_while_receiving(pair):
    """A consumer that deletes each row as it reads it, while the transfer runs."""
    a, b = pair
    n, tag = 3000, "eat"
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, n)
    consumed = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = b.query("SELECT x, data FROM mqin WHERE token=? ORDER BY x", (tag,))
        if rows:
            consumed += dbmod.numbers_in([(d,) for _x, d in rows], tag)
            dbmod.sqlite_cli(b.db, f"DELETE FROM mqin WHERE x <= {rows[-1][0]};")
        elif a.count("mqout", "token=?", (tag,)) == 0:
            break
        else:
            time.sleep(0.02)
    assert_series_delivered(a, b, tag, n, 10, consumed=consumed)
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_sender_with_a_new_database_is_not_taken_for_a_duplicate(pair):
    """A sender that starts over with a fresh database reuses x from 1: the receiver must
    not drop those as duplicates of the old ones (tinymq.pl lost them)."""
    a, b = pair
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "fresh", 5)
    assert_series_delivered(a, b, "fresh", 5, 15)
    a.stop()
    for suffix in ("", "-wal", "-shm"):
        p = a.db.with_name(a.db.name + suffix)
        if p.exists():
            p.unlink()
    a.start()
    first, _last = dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "fresh", 5, start=6)
    assert first == 1, "a fresh database starts x at 1 (the point of this test)"
    assert_series_delivered(a, b, "fresh", 10, 15)
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_two_senders_to_one_receiver_each_in_order(start_daemon):
    a, c, b = start_daemon("a"), start_daemon("c"), start_daemon("b")
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "from-a", 2000)
    dbmod.enqueue_series(c.db, "127.0.0.1", b.port, "from-c", 2000)
    assert_series_delivered(a, b, "from-a", 2000, 40)
    assert_series_delivered(c, b, "from-c", 2000, 40)
    assert {r[0] for r in b.query("SELECT sport FROM mqin WHERE token='from-a'")} == {a.port}
    assert {r[0] for r in b.query("SELECT sport FROM mqin WHERE token='from-c'")} == {c.port}
    for d in (a, b, c):
        d.stop()
