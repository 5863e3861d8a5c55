"""Receiving: order, duplicates across restarts, cancel gaps, reassembly; real SQLite."""

import itertools
import sqlite3
import threading
import time

import pytest

from tinymqd import inbound as inbound_module, protocol, store
from tinymqd.budget import STREAM_COST
from tinymqd.inbound import Inbound
from tinymqd.instream import RangeSet
from tinymqd.writer import Writer

SENDER, ME = 0x5E, 0x3E
ADDR = ("127.0.0.1", 9001)
MAX_MESSAGE = 10000


class Harness:
    """An Inbound with a real writer thread and database; acks are collected."""

    def __init__(self, path, known=None):
        self.path = path
        self.stopping = threading.Event()
        self.writer = Writer(path, self.stopping)
        self.writer.start()
        self.acks = []
        self.done = threading.Condition()
        self.inbound = Inbound(protocol.Origin(9000, ME, 1, itertools.count(1)), self.writer,
                               self.capture, lambda *key: (known or {}).get(key, 0),
                               max_message=MAX_MESSAGE)

    def capture(self, datagram, addr, local=None):
        with self.done:
            self.acks.append(protocol.decode(datagram))
            self.done.notify_all()

    def data(self, pn, frames, base=1, run=5, stream=1):
        sender = protocol.Origin(9001, SENDER, run, itertools.count(1))
        raw = protocol.encode_data(sender, None, 1, stream, pn, ME, 0, base, frames)
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


def msg(seq, text):
    blob = protocol.encode_message(protocol.KIND_TEXT, b"t", b"", text.encode())
    return (seq, 0, 1, len(blob), protocol.message_crc(blob), blob)


def fragments(seq, blob, size=1000):
    """The frames of one message cut into `size`-byte fragments."""
    parts = [blob[i:i + size] for i in range(0, len(blob), size)]
    crc = protocol.message_crc(blob)
    return [(seq, i, len(parts), len(blob), crc, part) for i, part in enumerate(parts)]


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
    for i, frame in reversed(list(enumerate(fragments(1, blob)))):
        harness.data(10 + i, [frame])
    harness.wait_committed(2)
    assert harness.mqin() == [(1, bytes(range(256)) * 20)]


def test_fragments_of_two_versions_of_a_message_never_mix(harness):
    """The row was updated (or the sender restarted) while the message was in flight:
    what is stored is one version, whole."""
    old = fragments(1, protocol.encode_message(protocol.KIND_BLOB, None, b"", b"o" * 3000))
    new = fragments(1, protocol.encode_message(protocol.KIND_BLOB, None, b"", b"n" * 3000))
    harness.data(1, [old[0]])
    harness.data(2, [old[1]])
    for i, frame in enumerate(new[1:] + new[:1]):
        harness.data(3 + i, [frame], run=6)
    harness.data(9, [old[2]])  # a late fragment of the old version
    harness.wait_committed(2)
    assert harness.mqin() == [(1, b"n" * 3000)]


@pytest.mark.parametrize("size,sent", [
    (MAX_MESSAGE + 1, "all"),  # seen to be too large once whole
    (MAX_MESSAGE + 500000, "first"),  # its length says so at the first fragment
])
def test_a_message_larger_than_max_message_is_refused_and_skipped(harness, size, sent):
    big = fragments(2, protocol.encode_message(protocol.KIND_BLOB, None, b"", b"x" * size))
    harness.data(1, [msg(1, "a")])
    for i, frame in enumerate(big if sent == "all" else big[:1]):
        harness.data(2 + i, [frame])
    harness.wait_committed(2)
    assert harness.acks[-1].refused == 2 and harness.acks[-1].limit == MAX_MESSAGE
    harness.data(1000, [msg(3, "c")], base=3)  # the sender took it out of the stream
    harness.wait_committed(4)
    assert harness.mqin() == [(1, "a"), (3, "c")]
    assert harness.acks[-1].refused == 0


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
        second.data(1, [msg(1, "a"), msg(2, "b")], run=6)  # the sender resends
        second.data(2, [msg(3, "c")], run=6)
        second.wait_committed(4)
        assert second.mqin() == [(3, "c")]
    finally:
        second.close()


def test_sender_restart_starts_packet_numbers_afresh(harness):
    harness.data(100, [msg(1, "a")], run=5)
    harness.data(1, [msg(2, "b")], run=6)
    assert harness.acks[-1].ranges[0] == (1, 1)


def test_acks_echo_the_senders_run_and_name_its_stream(harness):
    harness.data(1, [msg(1, "a")], run=77, stream=1 << 60)
    harness.wait_committed(2)
    ack = harness.acks[-1]
    assert ack.header.peer_run == 77 and ack.stream == 1 << 60 and ack.header.node == ME


def test_a_message_whose_checksum_does_not_match_is_reported(harness):
    seq, frag, nfrags, total, crc, blob = msg(1, "a")
    assert harness.data(1, [(seq, frag, nfrags, total, crc ^ 1, blob)]) is False
    assert harness.mqin() == []


def test_rangeset_merges_and_stays_bounded():
    r = RangeSet()
    for pn in [1, 2, 3, 7, 5, 6, 4]:
        r.add(pn)
    assert r.ranges == [(1, 7)]
    for pn in range(100, 1000, 2):
        r.add(pn)
    assert len(r.ranges) <= 64 and r.recent()[0] == (998, 998)


def test_memory_is_charged_to_its_source_and_bounded(harness):
    """Early fragments of large messages from one address: what it may hold is bounded
    by its share, however many streams or messages it uses; another source still has
    room, and everything is released once the messages are stored or dropped."""
    inbound = harness.inbound
    blob = protocol.encode_message(protocol.KIND_BLOB, None, b"", b"z" * 9000)
    accepted = 0
    for stream in range(1, 200):
        for seq in range(2, 6):  # never the next in order: they wait in memory
            frames = fragments(seq, blob)[:-1]
            for i, frame in enumerate(frames):
                accepted += harness.data(stream * 100 + seq * 10 + i, [frame], stream=stream)
    share = inbound.budget.source_limit
    assert inbound.budget.by_source[ADDR[0]] <= share
    assert inbound.budget.total <= inbound.budget.total_limit + share
    other = ("127.0.0.2", 9001)
    raw = protocol.encode_data(protocol.Origin(9001, SENDER + 1, 5, itertools.count(1)), None,
                               1, 1, 1, ME, 0, 1, [msg(1, "from elsewhere")])
    inbound.on_data(protocol.decode(raw), other)
    inbound.flush()
    harness.wait_committed(2)
    assert ("from elsewhere",) in [row[1:] for row in harness.mqin()]
    inbound.sweep(time.monotonic() + 10 ** 6)  # long idle: partials and idle streams go
    assert inbound.budget.total == 0 and not inbound.budget.by_source


def test_streams_per_source_are_capped_and_idle_ones_make_room(harness, monkeypatch):
    monkeypatch.setattr(inbound_module, "MAX_SOURCE_STREAMS", 3)
    inbound = harness.inbound
    for stream in (1, 2, 3):
        harness.data(1, [msg(1, f"s{stream}")], stream=stream)
    harness.wait_committed(2)
    with harness.done:
        harness.done.wait_for(lambda: inbound.budget.total == 3 * STREAM_COST, timeout=5)
    harness.data(1, [msg(1, "s4")], stream=4)  # the longest idle one is forgotten
    assert len(inbound.streams) == 3
    blob = protocol.encode_message(protocol.KIND_BLOB, None, b"", b"y" * 3000)
    for stream in (5, 6):  # busy streams (a partial message each) are never forgotten
        harness.data(1, fragments(1, blob)[:1], stream=stream)
    harness.data(1, [msg(1, "s7")], stream=7)
    assert (SENDER, 7) not in inbound.streams and inbound.refused_streams >= 1
