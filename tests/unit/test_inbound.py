"""Receiving: order, duplicates across restarts, cancel gaps, reassembly; real SQLite."""

import sqlite3
import threading

import pytest

from tinymqd import protocol, store
from tinymqd.inbound import Inbound, RangeSet
from tinymqd.writer import Writer

SENDER, ME = 0x5E, 0x3E
ADDR = ("127.0.0.1", 9001)


class Harness:
    """An Inbound with a real writer thread and database; acks are collected."""

    def __init__(self, path, known=None):
        self.path = path
        self.stopping = threading.Event()
        self.writer = Writer(path, self.stopping)
        self.writer.start()
        self.acks = []
        self.done = threading.Condition()
        self.inbound = Inbound(ME, 9000, self.writer, self.capture, known or {}, boot=1)

    def capture(self, datagram, addr):
        with self.done:
            self.acks.append(protocol.decode(datagram))
            self.done.notify_all()

    def data(self, pn, frames, base=1, boot=5, stream=1):
        raw = protocol.encode_data(9001, SENDER, ME, stream, boot, pn, base, frames)
        ok = self.inbound.on_data(protocol.decode(raw), ADDR)
        self.inbound.flush()
        return ok

    def wait_committed(self, value):
        with self.done:
            assert self.done.wait_for(
                lambda: any(a.committed >= value for a in self.acks), timeout=5)

    def close(self):
        self.stopping.set()
        self.writer.stop()
        self.writer.join(5)

    def mqin(self):
        with sqlite3.connect(self.path) as conn:
            return conn.execute("SELECT seq, data FROM mqin ORDER BY x").fetchall()


def msg(seq, text, frag=0, nfrags=1):
    return (seq, frag, nfrags, protocol.encode_message(protocol.KIND_TEXT, b"t", b"",
                                                       text.encode()))


@pytest.fixture
def harness(tmp_path):
    path = str(tmp_path / "q.db")
    store.initialize(path)
    h = Harness(path)
    yield h
    h.close()


def test_out_of_order_arrivals_are_stored_in_order(harness):
    harness.data(1, [msg(3, "c")])
    harness.data(2, [msg(2, "b")])
    assert harness.mqin() == []
    harness.data(3, [msg(1, "a")])
    harness.wait_committed(4)
    assert harness.mqin() == [(1, "a"), (2, "b"), (3, "c")]


def test_duplicates_are_stored_once_and_acknowledged_again(harness):
    harness.data(1, [msg(1, "a")])
    harness.wait_committed(2)
    before = len(harness.acks)
    harness.data(2, [msg(1, "a")])
    assert harness.mqin() == [(1, "a")]
    assert len(harness.acks) > before and harness.acks[-1].committed == 2


def test_base_skips_a_cancelled_message_without_waiting_for_it(harness):
    harness.data(1, [msg(2, "b")], base=1)
    harness.data(2, [msg(3, "c")], base=2)  # the sender cancelled seq 1
    harness.wait_committed(4)
    assert harness.mqin() == [(2, "b"), (3, "c")]


def test_fragments_are_reassembled_in_any_order(harness):
    blob = protocol.encode_message(protocol.KIND_BLOB, None, b"", bytes(range(256)) * 20)
    parts = [blob[i:i + 1000] for i in range(0, len(blob), 1000)]
    for i in reversed(range(len(parts))):
        harness.data(10 + i, [(1, i, len(parts), parts[i])])
    harness.wait_committed(2)
    assert harness.mqin() == [(1, bytes(range(256)) * 20)]


def test_committed_point_survives_a_restart_and_consumer_deletes(tmp_path):
    path = str(tmp_path / "q.db")
    store.initialize(path)
    first = Harness(path)
    first.data(1, [msg(1, "a"), msg(2, "b")])
    first.wait_committed(3)
    first.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM mqin")  # the consumer processed them
        known = {(s, st): n for s, st, n in conn.execute(
            "SELECT sender, stream, next_seq FROM tinymq_rx")}
    second = Harness(path, known)
    try:
        second.data(1, [msg(1, "a"), msg(2, "b")], boot=6)  # the sender resends
        second.data(2, [msg(3, "c")], boot=6)
        second.wait_committed(4)
        assert second.mqin() == [(3, "c")]
    finally:
        second.close()


def test_sender_restart_starts_packet_numbers_afresh(harness):
    harness.data(100, [msg(1, "a")], boot=5)
    harness.data(1, [msg(2, "b")], boot=6)
    assert harness.acks[-1].ranges[0] == (1, 1)


def test_inconsistent_fragment_count_is_reported(harness):
    harness.data(1, [msg(1, "a", frag=0, nfrags=2)])
    assert harness.data(2, [msg(1, "a", frag=1, nfrags=3)]) is False


def test_rangeset_merges_and_stays_bounded():
    r = RangeSet()
    for pn in [1, 2, 3, 7, 5, 6, 4]:
        r.add(pn)
    assert r.ranges == [(1, 7)]
    for pn in range(100, 1000, 2):
        r.add(pn)
    assert len(r.ranges) <= 64 and r.recent()[0] == (998, 998)
