"""Never gives up, resumes at once, isolation between destinations, both directions at
once, and DELETE cancels."""

import statistics
import time

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.observe import LogMark
from tests.support.ports import free_udp_port
from tests.support.wait import holds_for, wait_until


def latency(a, b, tag, i, timeout=10):
    """Enqueue one message a -> b and return seconds until it is in b's mqin."""
    t0 = time.monotonic()
    a.enqueue(b, tag, f"{tag}-{i:06d}")
    wait_until(lambda: b.count("mqin", "data=?", (f"{tag}-{i:06d}",)) == 1, timeout,
               f"{tag} {i} delivered", interval=0.002,
               describe=lambda: dbmod.describe_queues(a.db, b.db))
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_receiver_down_10s_delivery_resumes_within_2s_of_ready(pair):
    a, b = pair
    latency(a, b, "warm", 1)
    b.stop()
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "down", 2000)
    t_down = time.monotonic()
    while time.monotonic() - t_down < 10:  # the scenario: B is away for 10 s
        a.assert_alive()
        time.sleep(0.5)
    assert a.count("mqout", "token='down'") == 2000, "rows must stay queued while B is down"
    b.start()
    wait_until(lambda: b.count("mqin", "token='down'") > 0, 10, "delivery after B is back",
               interval=0.01, describe=lambda: dbmod.describe_queues(a.db, b.db))
    took = time.monotonic() - b.ready_at
    assert took < 2.0, f"delivery resumed {took:.2f} s after B's READY=1 (promise: ~1 s)"
    assert_series_delivered(a, b, "down", 2000, 20)
    # peer state changes are logged once per change, not once per retransmission
    about_b = [line for line in a.stderr_text().splitlines() if f":{b.port}" in line]
    assert 1 <= len(about_b) <= 4, ("expected a line when B became unreachable and one when it "
                                    f"was back, got {len(about_b)}:\n" + "\n".join(about_b[:10]))
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_sender_started_before_receiver_delivers_when_it_comes(make_daemon):
    a, b = make_daemon("a"), make_daemon("b")
    a.start()
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "early", 10)
    time.sleep(2.5)  # the scenario: the peer has never been up yet
    b.start()
    wait_until(lambda: b.count("mqin") == 10, 10, "delivered once B is up")
    assert time.monotonic() - b.ready_at < 2.0
    a.stop()
    b.stop()


def dead_destinations(a, make_sink, n=50):
    """Queue rows from a to: a port nobody listens on, a peer that never answers, an
    unresolvable name, and a big multi-fragment message to the dead port."""
    dead = free_udp_port()
    sink = make_sink()
    rows = [("127.0.0.1", dead, "dead", f"dead-{i}") for i in range(n)]
    rows += [("127.0.0.1", sink.port, "mute", f"mute-{i}") for i in range(n)]
    rows += [("no-such-host.invalid", 9000, "nxdomain", "x")]
    rows += [("127.0.0.1", dead, "dead", "B" * 200000)]
    dbmod.enqueue_many(a.db, rows)
    return dead, sink


@pytest.mark.timeout(90)
def test_dead_destination_does_not_delay_a_live_one(pair, make_sink):
    a, b = pair
    base = [latency(a, b, "base", i) for i in range(10)]
    _dead, sink = dead_destinations(a, make_sink)
    wait_until(lambda: sink.count() > 0, 5, "the mute peer is being tried")
    time.sleep(1.5)  # let the dead destinations reach their retry back-off
    lat = [latency(a, b, "live", i) for i in range(20)]
    base_med, live_med = statistics.median(base), statistics.median(lat)
    print(f"latency without dead destinations: median {base_med * 1000:.1f} ms; "
          f"with: median {live_med * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms")
    assert max(lat) < 1.0, f"a live message took {max(lat):.2f} s beside dead destinations"
    assert live_med <= max(3 * base_med, base_med + 0.1), (
        f"median latency {live_med * 1000:.0f} ms beside dead destinations vs "
        f"{base_med * 1000:.0f} ms without")
    assert a.count("mqout", "token IN ('dead','mute')") == 101, "undeliverable rows must stay"
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_undeliverable_rows_do_not_block_inbound(pair, make_sink):
    """In tinymq.pl one unacknowledged message blocked all inbound traffic."""
    a, b = pair
    dead_destinations(a, make_sink)
    dbmod.enqueue_series(b.db, "127.0.0.1", a.port, "inbound", 500)
    assert_series_delivered(b, a, "inbound", 500, 15)
    a.stop()
    b.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_both_directions_at_once(pair):
    """tinymq.pl deadlocked when two daemons sent to each other."""
    a, b = pair
    n = 4000
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "a2b", n)
    dbmod.enqueue_series(b.db, "127.0.0.1", a.port, "b2a", n)
    # while B floods A, a single A -> B message is not held back (tinymq.pl waited 44 s)
    lat = latency(a, b, "single", 1, timeout=30)
    assert lat < 1.0, f"A -> B took {lat:.2f} s while B was sending to A"
    assert_series_delivered(a, b, "a2b", n, 90)
    assert_series_delivered(b, a, "b2a", n, 30)
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_delete_cancels_a_row_to_a_dead_destination(make_daemon):
    a, b = make_daemon("a"), make_daemon("b")
    a.start()
    x_cancel = a.enqueue(b, "c", "cancel-me")
    x_keep1 = a.enqueue(b, "c", "keep-1")
    x_big = a.enqueue(b, "c", "cancel-big-" + "y" * 50000)
    time.sleep(1.5)  # the scenario: A has been trying for a while
    dbmod.sqlite_cli(a.db, f"DELETE FROM mqout WHERE x IN ({x_cancel}, {x_big});")
    a.enqueue(b, "c", "keep-2")
    b.start()
    wait_until(lambda: b.count("mqin") >= 2, 10, "the kept rows arrive",
               describe=lambda: dbmod.describe_queues(a.db, b.db))
    holds_for(lambda: b.count("mqin") == 2, 1.5, "the deleted rows never arrive",
              describe=lambda: [r[0][:20] for r in b.query("SELECT data FROM mqin ORDER BY x")])
    assert [r[0] for r in b.query("SELECT data FROM mqin ORDER BY x")] == ["keep-1", "keep-2"]
    assert a.count("mqout") == 0 and x_keep1
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_delete_cancels_in_an_established_stream(pair, make_relay):
    """A and B already talk; the link is cut, rows are queued, one is deleted, the link
    comes back: the deleted one never arrives, the others do, in order."""
    a, b = pair
    relay = make_relay(("127.0.0.1", b.port))
    a.enqueue(relay.port, "s", "s-000001")
    wait_until(lambda: b.count("mqin") == 1, 10, "warm-up delivered")
    relay.set_faults("both", loss=100)
    x2 = a.enqueue(relay.port, "s", "s-000002")
    a.enqueue(relay.port, "s", "s-000003")
    x4 = a.enqueue(relay.port, "s", "s-000004-" + "f" * 30000)
    a.enqueue(relay.port, "s", "s-000005")
    wait_until(lambda: relay.snapshot()["forward"]["dropped"] >= 3, 5, "A tried the cut link")
    time.sleep(1.0)
    dbmod.sqlite_cli(a.db, f"DELETE FROM mqout WHERE x IN ({x2}, {x4});")
    time.sleep(0.5)
    relay.set_faults("both", loss=0)
    wait_until(lambda: b.count("mqin") >= 3, 10, "the kept rows arrive",
               describe=lambda: dbmod.describe_queues(a.db, b.db))
    holds_for(lambda: b.count("mqin") == 3, 1.5, "the deleted rows never arrive",
              describe=lambda: [r[0][:20] for r in b.query("SELECT data FROM mqin ORDER BY x")])
    assert dbmod.series_numbers(b.db, "s") == [1, 3, 5]
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_delete_stops_retransmissions_within_a_second(start_daemon, make_sink):
    """tinymq.pl kept retrying a deleted row."""
    a = start_daemon("a")
    sink = make_sink()  # a peer that receives but never acknowledges
    marker = b"CANCEL-MARKER-0123456789-"
    x = dbmod.enqueue(a.db, "127.0.0.1", sink.port, "m", marker * 20)
    wait_until(lambda: sum(marker in d for d in sink.datagrams()) >= 2, 10,
               "the row is sent and retransmitted")
    dbmod.sqlite_cli(a.db, f"DELETE FROM mqout WHERE x={x};")
    t_del = time.monotonic()

    def late():
        return [t - t_del for t, d, _a in sink.received if marker in d and t > t_del + 1.2]

    holds_for(lambda: not late(), 3.5, "no retransmission of the deleted row after 1.2 s",
              describe=lambda: f"sent {len(late())} times more, last {max(late()):.1f} s "
                               f"after the DELETE")
    a.stop()


@pytest.mark.timeout(60)
def test_a_row_a_consumers_unique_index_refuses_is_waited_out_not_a_crash(pair):
    """A consumer adds UNIQUE(token) to mqin; a second message with that token cannot be
    stored. B stays up, says so once, acknowledges nothing it has not stored, and once the
    index is dropped the message arrives, exactly once and in order with later ones."""
    a, b = pair
    mark = LogMark(b)
    dbmod.sqlite_cli(b.db, "CREATE UNIQUE INDEX consumer_dedupe ON mqin(token);")
    a.enqueue(b, "same", "first")
    wait_until(lambda: b.count("mqin") == 1, 10, "the first stored (in a batch of its own)")
    for data in ("second, same token", "third"):
        a.enqueue(b, "same", data)
    wait_until(lambda: "refuses a row" in mark.text(), 10, "B says a constraint refuses a row")
    holds_for(lambda: b.running and b.count("mqin") == 1, 2.0,
              "B up, storing nothing more while the index refuses the row")
    assert a.count("mqout") == 2, "rows B could not store must stay queued at A"
    assert len([line for line in mark.lines() if "refuses a row" in line]) == 1
    dbmod.sqlite_cli(b.db, "DROP INDEX consumer_dedupe;")
    wait_until(lambda: b.count("mqin") == 3 and a.count("mqout") == 0, 10,
               "delivered once the index is gone")
    assert [r[0] for r in b.query("SELECT data FROM mqin ORDER BY x")] == \
        ["first", "second, same token", "third"]
    assert "Traceback" not in mark.text()
