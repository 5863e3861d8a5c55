"""Exactly once and in order through a network that loses, duplicates, reorders, delays,
corrupts and truncates datagrams, including kills and restarts of either side."""

import hashlib
import signal

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.wait import holds_for, wait_until

CHAOS = dict(loss=10, dup=5, reorder=5, delay_ms=1, jitter_ms=5)


def big(tag, i, size=50000):
    """A deterministic ~50 KB message (many fragments) numbered i."""
    head = f"{tag}-{i:06d}:"
    body = hashlib.shake_256(head.encode()).hexdigest(size // 2)
    return (head + body)[:size]


def enqueue_mix(db, port, tag, n_small, big_every):
    """n_small small messages with a 50 KB one after every `big_every`; all numbered in
    one sequence. Returns the list of numbers that are big."""
    rows, bigs, i = [], [], 0
    for k in range(n_small):
        i += 1
        rows.append(("127.0.0.1", port, tag, f"{tag}-{i:06d}"))
        if big_every and k % big_every == big_every - 1:
            i += 1
            rows.append(("127.0.0.1", port, tag, big(tag, i)))
            bigs.append(i)
    for start in range(0, len(rows), 1000):
        dbmod.enqueue_many(db, rows[start:start + 1000])
    return i, bigs


def check_stream(sender, receiver, tag, total, bigs, timeout):
    assert_series_delivered(sender, receiver, tag, total, timeout)
    for i in bigs:
        got = receiver.query("SELECT data FROM mqin WHERE token=? AND data LIKE ?",
                             (tag, f"{tag}-{i:06d}:%"))
        assert got == [(big(tag, i),)], f"{tag}: big message {i} corrupted or missing"
    ports = {r[0] for r in receiver.query("SELECT sport FROM mqin WHERE token=?", (tag,))}
    assert ports == {sender.port}, f"sport must be the sender's listening port: {ports}"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_both_ways_through_lossy_duplicating_reordering_relays(pair, make_relay):
    a, b = pair
    to_b = make_relay(("127.0.0.1", b.port), seed=11, **CHAOS)
    to_a = make_relay(("127.0.0.1", a.port), seed=12, **CHAOS)
    total_ab, bigs_ab = enqueue_mix(a.db, to_b.port, "ab", 3000, 300)
    total_ba, bigs_ba = enqueue_mix(b.db, to_a.port, "ba", 1500, 300)
    check_stream(a, b, "ab", total_ab, bigs_ab, timeout=150)
    check_stream(b, a, "ba", total_ba, bigs_ba, timeout=30)
    st = to_b.snapshot()
    print("relay a->b:", st)
    assert st["forward"]["dropped"] > 0 and st["forward"]["duplicated"] > 0
    a.stop()
    b.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_through_chaos_with_kills_and_restarts(pair, make_relay):
    a, b = pair
    relay = make_relay(("127.0.0.1", b.port), seed=21, **CHAOS)
    total, bigs = enqueue_mix(a.db, relay.port, "k", 3000, 500)
    steps = [(0.15, a, signal.SIGKILL), (0.35, b, signal.SIGKILL), (0.55, a, signal.SIGTERM),
             (0.75, b, signal.SIGTERM)]
    mid = 0
    for fraction, victim, sig in steps:
        wait_until(lambda: b.count("mqin") >= total * fraction, 120, f"{fraction:.0%} delivered",
                   interval=0.01, describe=lambda: dbmod.describe_queues(a.db, b.db))
        if sig == signal.SIGKILL:
            victim.kill()
        else:
            victim.stop(sig)
        mid += a.count("mqout") > 0
        victim.start()
    assert mid >= 2, "the transfer ended before the kills"
    check_stream(a, b, "k", total, bigs, timeout=120)
    a.stop()
    b.stop()


@pytest.mark.timeout(120)
def test_corruption_and_truncation_never_reach_mqin(pair, make_relay):
    a, b = pair
    relay = make_relay(("127.0.0.1", b.port), seed=31, corrupt=5, truncate=5, loss=2, dup=2)
    blobs = [hashlib.shake_256(str(i).encode()).digest(1 + (i * 37) % 4000) for i in range(400)]
    dbmod.enqueue_many(a.db, [("127.0.0.1", relay.port, "blob", d) for d in blobs])
    wait_until(lambda: a.count("mqout") == 0 and b.count("mqin") >= len(blobs), 90,
               "all blobs delivered", describe=lambda: dbmod.describe_queues(a.db, b.db))
    holds_for(lambda: b.count("mqin") == len(blobs), 1.0, "no extra rows")
    got = [r[0] for r in b.query("SELECT data FROM mqin ORDER BY x")]
    assert got == blobs, "blobs changed, missing, duplicated or out of order"
    st = relay.snapshot()
    assert st["forward"]["corrupted"] > 0 and st["forward"]["truncated"] > 0
    a.stop()
    b.stop()
