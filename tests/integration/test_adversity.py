"""Adversity: chaos with crashes, a full disk, a locked database, and a flood
of hostile datagrams.

- chaos: numbered messages both ways through relays with 10% loss, 5% duplication,
  reordering and jitter while both daemons are SIGKILLed and restarted at seeded random
  moments; 0 lost, 0 duplicated, 0 out of order. A short run is part of the default test
  run; the full one (20,000 + 5,000 messages, 40 kills) runs with `make chaos`
  (pytest -m chaos). TINYMQ_CHAOS_SEED=<n> repeats a run with another seed.
- full disk: the receiver's, then the sender's database on a small tmpfs that fills up
  while messages flow.
- locked database: an application holds BEGIN IMMEDIATE on the receiver's, then the
  sender's database for 10 s while messages flow.
- hostile datagrams: 100,000 random and mutated datagrams at two running daemons.
"""

import collections
import random
import re
import socket
import time

import pytest

from tests.support import db as dbmod
from tests.support.chaos import ChaosRun, assert_clean, format_figures, seed_from_env
from tests.support.checks import assert_handoff, assert_series_delivered as complete
from tests.support.disk import SmallDisk, WriteLock, can_mount_tmpfs, cut_off_space
from tests.support import wire
from tests.support.observe import LogMark, matching, rss_bytes, status_number
from tests.support.ports import udp_socket
from tests.support.wait import holds_for, wait_until

# -- chaos ---------------------------------------------------------------------------------


def chaos_selected(config):
    """The full chaos run is only for `pytest -m chaos` (make chaos)."""
    return re.search(r"\bchaos\b", config.option.markexpr or "") is not None and \
        not re.search(r"not\s+chaos", config.option.markexpr or "")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_short_both_ways_with_kills(make_daemon, make_relay):
    """3,000 + 1,000 messages, 6 kill events (10-30 s)."""
    run = ChaosRun(make_daemon, make_relay, seed=seed_from_env(4), n_ab=3000, n_ba=1000,
                   kills=6, backlog=1500, point_timeout=90, final_timeout=120)
    figures = run.run()
    print("\n" + format_figures(figures))
    assert_clean(figures)
    assert figures["kills"]["total"] >= 6
    assert figures["kills"]["with_traffic"] >= 5, "the transfer ended before the kills"
    assert figures["relays"]["a->b"]["forward"]["dropped"] > 0


@pytest.mark.chaos
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_chaos_full_20000_and_5000_messages_40_kills(make_daemon, make_relay, request,
                                                     tmp_path, keyed):
    """keyed: both daemons keyed peers, every datagram sealed (pytest -m chaos -k keyed
    for that one only, -k plain for the other)."""
    if not chaos_selected(request.config):
        pytest.skip("the full chaos run: make chaos (pytest -m chaos)")
    run = ChaosRun(make_daemon, make_relay, seed=seed_from_env(2026), n_ab=20000, n_ba=5000,
                   kills=40, backlog=3000, point_timeout=300, final_timeout=900,
                   keyed=keyed, key_dir=tmp_path)
    figures = run.run()
    report = format_figures(figures)
    print("\n" + report)
    assert_clean(figures)
    assert figures["kills"]["total"] >= 40
    assert min(figures["kills"]["a"], figures["kills"]["b"]) >= 20
    assert figures["kills"]["with_traffic"] >= 36, "the transfer ended before the kills"


# -- helpers for the storage tests ------------------------------------------------------

def ride_out(d, check):
    """Run check(); a daemon may exit under a full disk (non-zero, restartable) instead
    of waiting: return its exit code then, None if it kept running."""
    try:
        check()
    except AssertionError:
        if d.running:
            raise
        return d.proc.returncode
    return None


def restart_if_exited(d, rc, mark):
    """After space came back: a daemon that exited must have said why, then restart."""
    if rc is None:
        return
    print(f"\n{d.name} exited with {rc} while its disk was full; restarting it")
    assert rc != 0, f"{d.name} exited 0 on a full disk"
    assert matching(mark.problems(), DB_TROUBLE), f"{d.name} exited without saying why"
    d.start()


def no_traceback(d, mark):
    text = mark.text()
    assert "Traceback" not in text, f"{d.name} logged a traceback:\n{text[-3000:]}"


DB_TROUBLE = r"database|disk|space"  # what a line about the trouble must mention


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs under tmp_path/disk, unmounted at teardown even on failure. Ask for
    it before make_daemon/start_daemon so that the daemons are stopped before."""
    if not can_mount_tmpfs():
        pytest.skip("needs root to mount a tmpfs")
    disk = SmallDisk(tmp_path / "disk", 32 << 20).mount()
    try:
        yield disk
    finally:
        disk.free()
        disk.umount()


# -- full disk ---------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_receiver_disk_full_acknowledges_nothing_uncommitted_then_completes(
        small_disk, make_daemon):
    a = make_daemon("a").start()
    b = make_daemon("b", database=str(small_disk.path / "b.db")).start()
    tag, first, more = "full-rx", 1500, 1000
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, first, pad=400)
    wait_until(lambda: b.count("mqin") >= 150, 20, "messages flow before the disk fills")
    mark = LogMark(b)
    cut_off_space(b, small_disk)
    assert small_disk.free_bytes() == 0
    # more messages keep coming while B's disk is full
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, more, start=first + 1, pad=400)
    total = first + more
    said = wait_until(lambda: matching(mark.problems(), DB_TROUBLE), 15,
                      "B says its database cannot be written",
                      describe=lambda: "\n".join(mark.lines()[-5:]))
    stuck = b.count("mqin")
    rc = ride_out(b, lambda: holds_for(
        lambda: b.running and b.count("mqin") == stuck and assert_handoff(a, b, tag, total), 3.0,
        "B stores and acknowledges nothing while its disk is full",
        describe=lambda: dbmod.describe_queues(a.db, b.db)))
    assert_handoff(a, b, tag, total)
    assert stuck < total
    small_disk.free()
    restart_if_exited(b, rc, mark)
    complete(a, b, tag, total, timeout=60)
    b.assert_alive()
    lines = mark.lines()
    no_traceback(b, mark)
    print("\nB's log while full and after:\n" + "\n".join(lines))
    assert said and len(matching(mark.problems(), DB_TROUBLE)) <= 3, (
        "the full disk is not logged once (and once when it clears):\n" + "\n".join(lines))
    assert len(lines) <= 10, "B's log is flooded while its disk is full:\n" + "\n".join(lines)
    a.stop()
    b.stop()


@pytest.mark.timeout(120)
def test_sender_disk_full_keeps_rows_then_completes(small_disk, make_daemon):
    """A's own bookkeeping cannot be written: not the deletes of delivered rows, nor
    whatever it writes for rows it has not seen yet (numbers, last_error). Its rows stay,
    none is lost, and all arrive in order once space returns."""
    b = make_daemon("b").start()
    a = make_daemon("a", database=str(small_disk.path / "a.db")).start()
    # Enough that the disk fills while many are still queued, however fast A sends.
    tag, first, more = "full-tx", 5000, 500
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, first, pad=300)
    wait_until(lambda: b.count("mqin") >= 150, 20, "messages flow before the disk fills")
    mark = LogMark(a)
    # rows A has not seen yet: enqueued while A is frozen, just before the disk fills
    cut_off_space(a, small_disk, while_frozen=lambda: dbmod.enqueue_series(
        a.db, "127.0.0.1", b.port, tag, more, start=first + 1, pad=300))
    total = first + more
    wait_until(lambda: matching(mark.problems(), DB_TROUBLE), 15,
               "A says its database cannot be written",
               describe=lambda: "\n".join(mark.lines()[-5:]))
    queued = a.count("mqout", "token=?", (tag,))
    rc = ride_out(a, lambda: holds_for(
        lambda: a.running and a.count("mqout", "token=?", (tag,)) == queued and
        assert_handoff(a, b, tag, total), 3.0,
        "A keeps every row while its disk is full",
        describe=lambda: f"{dbmod.describe_queues(a.db, b.db)}; A's rows: {queued} before; "
                         f"A's log: {mark.lines()[-3:]}"))
    assert a.count("mqout", "token=?", (tag,)) == queued
    assert queued > more, "A had delivered (nearly) everything before its disk filled"
    assert_handoff(a, b, tag, total)
    small_disk.free()
    restart_if_exited(a, rc, mark)
    complete(a, b, tag, total, timeout=60)
    a.assert_alive()
    lines = mark.lines()
    no_traceback(a, mark)
    print("\nA's log while full and after:\n" + "\n".join(lines))
    assert len(matching(mark.problems(), DB_TROUBLE)) <= 3, "\n".join(lines)
    assert len(lines) <= 10, "A's log is flooded while its disk is full:\n" + "\n".join(lines)
    a.stop()
    b.stop()


# -- locked database ---------------------------------------------------------------------

LOCK_SECONDS = 10.0


def hold_lock_while(lock, seconds, check, msg, describe):
    """Keep the application's write lock for `seconds` in all, asserting check() the
    whole time (the scenario's duration, not a wait for a condition)."""
    left = seconds - (time.monotonic() - lock.taken_at)
    holds_for(check, max(0.0, left), msg, interval=0.25, describe=describe)


def assert_logged_once(d, mark, during, held):
    """Exactly one line (WARNING or above) about the database while the lock was held,
    at most one more (e.g. "writable again") after it, and no traceback."""
    no_traceback(d, mark)
    print(f"\nlock held {held:.1f} s; {d.name}'s log:\n" + "\n".join(mark.lines()))
    warned = mark.problems(during)
    assert len(warned) == 1 and re.search(DB_TROUBLE, warned[0], re.I), (
        f"expected exactly one warning about the locked database during the {held:.0f} s "
        f"lock, got {len(warned)}:\n" + "\n".join(warned))
    after = during.problems()
    assert len(after) <= 1, "more than one line once the lock is gone:\n" + "\n".join(after)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_receiver_database_locked_10s_waits_logs_once_then_delivers(make_daemon):
    """An application holds a write transaction on the receiver's database for 10 s
    while messages come in: B stores and acknowledges nothing meanwhile, then all."""
    a = make_daemon("a").start()
    b = make_daemon("b").start()
    tag, first, more = "lock-rx", 2000, 1000
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, first, pad=100)
    wait_until(lambda: b.count("mqin") >= 200, 20, "messages flow before the lock")
    mark = LogMark(b)
    lock = WriteLock(b.db).acquire()
    try:
        stuck = b.count("mqin")
        dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, more, start=first + 1, pad=100)
        hold_lock_while(lock, LOCK_SECONDS,
                        lambda: b.running and b.count("mqin") == stuck and
                        assert_handoff(a, b, tag, first + more),
                        "B waits for the lock and acknowledges nothing meanwhile",
                        describe=lambda: dbmod.describe_queues(a.db, b.db))
        during = LogMark(b)
    finally:
        held = lock.release()
    complete(a, b, tag, first + more, timeout=60)
    b.assert_alive()
    assert_logged_once(b, mark, during, held)
    a.stop()
    b.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sender_database_locked_10s_waits_logs_once_then_delivers(make_daemon):
    """An application holds a write transaction on the sender's database (and enqueues
    in it) for 10 s: A can write nothing, not even the deletes of delivered rows."""
    a = make_daemon("a").start()
    b = make_daemon("b").start()
    tag, first, more = "lock-tx", 3000, 1000
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, tag, first, pad=100)
    wait_until(lambda: b.count("mqin") >= 300, 20, "messages flow before the lock")
    mark = LogMark(a)
    lock = WriteLock(a.db).acquire()
    try:
        queued = a.count("mqout", "token=?", (tag,))
        # the application's own transaction adds rows, visible when it commits
        lock.con.executemany(
            "INSERT INTO mqout (host, port, token, data) VALUES ('127.0.0.1', ?, ?, ?)",
            [(b.port, tag, f"{tag}-{i:06d}") for i in range(first + 1, first + more + 1)])
        hold_lock_while(lock, LOCK_SECONDS,
                        lambda: a.running and a.count("mqout", "token=?", (tag,)) == queued
                        and assert_handoff(a, b, tag, first),
                        "A waits for the lock, keeps its rows",
                        describe=lambda: dbmod.describe_queues(a.db, b.db))
        during = LogMark(a)
    finally:
        held = lock.release()
    complete(a, b, tag, first + more, timeout=60)
    a.assert_alive()
    assert_logged_once(a, mark, during, held)
    a.stop()
    b.stop()


# -- hostile datagrams -------------------------------------------------------------------

FLOOD = 100_000
FLOOD_RATE = 8000.0  # datagrams per second, both daemons together
RSS_GUARD = 1 << 30  # a daemon above this is stopped at once (protects the shared machine)
DROPPED = r"(\d+) bad datagram"


def node_id(d):
    return d.query("SELECT value FROM tinymq_meta WHERE key='node_id'")[0][0]


def capture_corpus(a, b, make_relay, sink):
    """Real datagrams: A -> B DATA (small and fragmented) and B's ACKs through a
    capturing relay, A's DATA to the mute sink, and HELLOs as A and B would send them."""
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    forward, reverse = wire.exchange(a, b, relay, "warm",
                                     [f"warm-{i:06d}" for i in range(1, 41)] + ["w" * 6000])
    corpus = forward + reverse + sink.datagrams()
    na, nb = node_id(a), node_id(b)
    corpus += [wire.seal(wire.header(wire.HELLO, b.port, nb, 7) + wire.hello_body(1 << 40)),
               wire.seal(wire.header(wire.HELLO, a.port, na, 9) + wire.hello_body(1 << 41))]
    return corpus


def misdirected_ack(rng, stream, seq):
    """A well-formed ACK that PROTOCOL.md says A must ignore, and from where to send it:
    it names the stream of the only row A has for the mute peer (which an attacker who
    sees the traffic could learn) and commits it, but it cannot echo A's run id, which
    only a peer that sees A's DATA knows: from the peer's own address, or a stranger's."""
    where = "from_peer" if rng.random() < 0.5 else "from_stranger"
    committed = seq + 1 + (rng.randrange(0, 1 << 40) if rng.random() < 0.5 else 0)
    return where, wire.seal(wire.header(wire.ACK, 9, rng.randrange(1, 1 << 63),
                                        rng.randrange(1, 1 << 63), rng.randrange(1, 1 << 63))
                            + wire.ack_body(stream, committed, [(1, 3)]))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_hostile_datagram_flood(make_daemon, make_relay, make_sink):
    """100,000 random and mutated datagrams at two daemons (from the address of a peer A
    sends to and from a stranger) while legitimate traffic flows both ways: no crash, no
    row created, no row removed, the legitimate messages exactly once, a quiet log."""
    rng = random.Random(6)
    a = make_daemon("a").start()
    b = make_daemon("b").start()
    sink = make_sink()  # a peer A sends to that never answers: its row must stay
    x_mute = a.enqueue(sink.port, "mute", "for the mute peer")
    wait_until(lambda: sink.count() >= 1, 10, "A sends to the mute peer")
    corpus = capture_corpus(a, b, make_relay, sink)
    hostile = wire.Hostile(rng, corpus)
    (sink_stream, sink_seq), = a.query("SELECT stream, seq FROM mqout WHERE x=?", (x_mute,))
    marks = {d: LogMark(d) for d in (a, b)}
    stranger = udp_socket()
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sources = (sink.sock, stranger)
    legit = [(0.10, a, b, "legit-ab", 1, 300), (0.25, b, a, "legit-ba", 1, 150),
             (0.40, a, b, "legit-ab", 301, 300), (0.60, b, a, "legit-ba", 151, 150),
             (0.70, a, b, "legit-ab", 601, 400)]
    sent = {a: 0, b: 0}
    kinds = collections.Counter()
    send_errors = 0
    t0 = time.monotonic()
    for n in range(FLOOD):
        if legit and n >= legit[0][0] * FLOOD:
            _at, src, dst, tag, start, count = legit.pop(0)
            dbmod.enqueue_series(src.db, "127.0.0.1", dst.port, tag, count, start=start)
        target = a if n % 2 else b
        if target is a and rng.random() < 0.02:
            kind, datagram = misdirected_ack(rng, sink_stream, sink_seq)
            source = sink.sock if kind == "from_peer" else stranger
            kind = "valid_ack_" + kind
        else:
            kind, datagram = hostile.make()
            source = rng.choice(sources)
            sent[target] += 1
        kinds[kind] += 1
        try:
            source.sendto(datagram, ("127.0.0.1", target.port))
        except OSError:
            send_errors += 1  # e.g. a full send buffer: the datagram is simply not sent
        if n % 200 == 199:
            ahead = t0 + (n + 1) / FLOOD_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the flood, not waiting for a condition
            if n % 2000 == 1999:
                for d in (a, b):
                    d.assert_alive()
                    if rss_bytes(d.pid) > RSS_GUARD:
                        d.kill()
                        pytest.fail(f"{d.name} grew beyond {RSS_GUARD >> 20} MiB during the "
                                    f"flood (stopped); kinds so far: {dict(kinds)}")
    took = time.monotonic() - t0
    print(f"\n{FLOOD} datagrams in {took:.1f} s ({send_errors} not sent): {dict(kinds)}")
    complete(a, b, "legit-ab", 1000, timeout=60)
    complete(b, a, "legit-ba", 300, timeout=30)
    for d in (a, b):
        d.assert_alive()
        print(f"{d.name}: RSS {rss_bytes(d.pid) >> 20} MiB")
    tokens_b = dict(b.query("SELECT token, count(*) FROM mqin GROUP BY token"))
    tokens_a = dict(a.query("SELECT token, count(*) FROM mqin GROUP BY token"))
    assert tokens_b == {"warm": 41, "legit-ab": 1000}, f"rows created in B's mqin: {tokens_b}"
    assert tokens_a == {"legit-ba": 300}, f"rows created in A's mqin: {tokens_a}"
    assert a.count("mqout", "x=?", (x_mute,)) == 1, "the row for the mute peer was removed"
    assert a.count("mqout") == 1 and b.count("mqout") == 0
    # the daemons saw the flood (not only the kernel's receive buffer): STATUS= counts
    for d in (a, b):
        want = sent[d] // 2
        wait_until(lambda: (status_number(d, DROPPED) or 0) >= want or
                   status_number(d, DROPPED) is None and d.notify.values("STATUS"), 15,
                   f"{d.name}'s STATUS= counts the bad datagrams (>= {want})",
                   describe=lambda: d.notify.values("STATUS")[-1:])
    for d, mark in marks.items():
        lines = mark.lines()
        no_traceback(d, mark)
        print(f"{d.name}: STATUS {d.notify.values('STATUS')[-1:]}; {len(lines)} log lines:\n"
              + "\n".join(lines[:12]))
        assert len(lines) <= 30, (f"{d.name} logged {len(lines)} lines for {sent[d]} bad "
                                  f"datagrams in {took:.0f} s (not rate-limited); first:\n"
                                  + "\n".join(lines[:15]))
    a.stop()
    b.stop()


@pytest.mark.timeout(60)
def test_huge_fragment_counts_do_not_make_a_daemon_allocate(start_daemon):
    """A 110-byte DATA datagram whose one frame claims a message of 2^22..2^24 fragments
    (a 16 MiB message in 1-byte fragments: not more than a receiver may be asked to
    take) must cost memory in proportion to what arrived, not to what it claims: four of
    them must not cost hundreds of MiB (a few hundred would exhaust any machine). Only
    four are sent, to spare the shared machine."""
    b = start_daemon("b")
    a = start_daemon("a")
    a.enqueue(b, "before", "before-000001")
    wait_until(lambda: b.count("mqin") == 1, 10, "B works")
    before = rss_bytes(b.pid)
    sock = udp_socket()
    rng = random.Random(7)
    for i, nfrags in enumerate((1 << 24, 1 << 24, 1 << 23, 1 << 22)):
        body = wire.data_body(stream=1 + i, pn=1, base=1, frames=[
            (1 + i, 0, nfrags, nfrags, 0, b"fragment")])  # 1-byte fragments, in theory
        sock.sendto(wire.seal(wire.header(wire.DATA, 9, rng.randrange(1, 1 << 63), 5) + body),
                    ("127.0.0.1", b.port))
    a.enqueue(b, "after", "after-000001")  # processed after the four
    wait_until(lambda: b.count("mqin", "token='after'") == 1, 10, "B still works")
    grown = rss_bytes(b.pid) - before
    b.assert_alive()
    assert grown < 64 << 20, (f"4 datagrams of {len(body) + wire.MIN_SIZE} bytes claiming huge fragment "
                              f"counts made B grow by {grown >> 20} MiB")
    assert b.count("mqin") == 2
    a.stop()
    b.stop()
