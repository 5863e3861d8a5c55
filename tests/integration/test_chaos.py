"""Exactly once and in order through a network that loses, duplicates, reorders, delays,
corrupts and truncates datagrams, including kills and restarts of either side."""

import hashlib
import signal

import pytest

from tests.support import db as dbmod
from tests.support.chaos import (FAULTS, ChaosRun, Direction, assert_clean, format_figures,
                                 mixed, seed_from_env)
from tests.support.wait import holds_for, wait_until


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_both_ways_through_lossy_duplicating_reordering_relays(pair, make_relay):
    """3,000 and 1,500 small messages, with a 50 KB one after every 300."""
    a, b = pair
    to_b = make_relay(("127.0.0.1", b.port), seed=11, **FAULTS)
    to_a = make_relay(("127.0.0.1", a.port), seed=12, **FAULTS)
    ab = Direction("ab", a, b, to_b, 3010, mixed("ab", 301))
    ba = Direction("ba", b, a, to_a, 1505, mixed("ba", 301))
    for d in (ab, ba):
        d.enqueue_upto(d.total)
    ab.assert_complete(timeout=150)
    ba.assert_complete(timeout=30)
    st = to_b.snapshot()
    print("relay a->b:", st)
    assert st["forward"]["dropped"] > 0 and st["forward"]["duplicated"] > 0
    a.stop()
    b.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_through_chaos_with_kills_and_restarts(pair, make_relay):
    """3,000 small messages with a 50 KB one after every 500, while A and B are killed
    (SIGKILL) and stopped (SIGTERM) in turn."""
    a, b = pair
    relay = make_relay(("127.0.0.1", b.port), seed=21, **FAULTS)
    k = Direction("k", a, b, relay, 3006, mixed("k", 501))
    k.enqueue_upto(k.total)
    steps = [(0.15, a, signal.SIGKILL), (0.35, b, signal.SIGKILL), (0.55, a, signal.SIGTERM),
             (0.75, b, signal.SIGTERM)]
    mid = 0
    for fraction, victim, sig in steps:
        wait_until(lambda: k.delivered() >= k.total * fraction, 120, f"{fraction:.0%} delivered",
                   interval=0.01, describe=lambda: dbmod.describe_queues(a.db, b.db))
        if sig == signal.SIGKILL:
            victim.kill()
        else:
            victim.stop(sig)
        mid += a.count("mqout") > 0
        victim.start()
    assert mid >= 2, "the transfer ended before the kills"
    k.assert_complete(timeout=120)
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


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_keyed_chaos_short_both_ways_with_kills(make_daemon, make_relay, tmp_path):
    """The short chaos run (test_adversity) with keyed peers (every datagram sealed, SPEC
    guarantee 11): 3,000 + 1,000 messages through relays with 10% loss, 5% duplication,
    reordering and jitter, 6 kill events;
    nothing lost, duplicated or reordered, every message authenticated by the key. The
    full keyed run is test_adversity's full chaos run with keyed=True (make chaos)."""
    run = ChaosRun(make_daemon, make_relay, seed=seed_from_env(8), n_ab=3000, n_ba=1000,
                   kills=6, backlog=1500, point_timeout=90, final_timeout=120,
                   keyed=True, key_dir=tmp_path)
    figures = run.run()
    print("\n" + format_figures(figures))
    assert_clean(figures)
    assert figures["keys"] == {"a": ["chaos"], "b": ["chaos"]}
    assert figures["kills"]["total"] >= 6
    assert figures["kills"]["with_traffic"] >= 5, "the transfer ended before the kills"
    assert figures["relays"]["a->b"]["forward"]["dropped"] > 0
