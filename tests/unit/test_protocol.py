"""The wire format, version 2: round trips, range checks, and rejection of anything not
intact."""

import itertools
import math
import struct

import pytest
from hypothesis import given, settings, strategies as st

from tests.support.wire import reseal
from tinymqd import protocol, sealing

NODE_A, NODE_B = 0x1111, 0x2222
RUN_A, RUN_B = 0xAAAA, 0xBBBB
U64 = (1 << 64) - 1


def origin(node=NODE_A, run=RUN_A, port=9000):
    return protocol.Origin(port, node, run, itertools.count(1))


def message(data=b"hello"):
    blob = protocol.encode_message(protocol.KIND_TEXT, b"t", b"", data)
    return blob, protocol.message_crc(blob)


def data_datagram(frames=None, base=5, stream=7):
    if frames is None:
        blob, crc = message()
        frames = [(5, 0, 1, len(blob), crc, blob)]
    return protocol.encode_data(origin(), None, RUN_B, stream, 42, NODE_B, 99, base, frames)


def test_data_round_trip():
    blob, crc = message(b"a:b\nc")
    frames = [(5, 0, 1, len(blob), crc, blob), (6, 2, 3, 9000, 0xDEAD, bytes(range(256)))]
    got = protocol.decode(data_datagram(frames, base=4))
    assert got.header == protocol.Header(protocol.DATA, 0, 9000, NODE_A, RUN_A, RUN_B, 1)
    assert (got.stream, got.pn, got.dst, got.cookie, got.base) == (7, 42, NODE_B, 99, 4)
    assert [tuple(f) for f in got.frames] == frames


def test_ack_round_trip():
    raw = protocol.encode_ack(origin(NODE_B, RUN_B, 9001), RUN_A, 7, 100,
                              [(90, 99), (10, 20)], refused=101, limit=5000)
    got = protocol.decode(raw)
    assert (got.stream, got.committed, got.refused, got.limit) == (7, 100, 101, 5000)
    assert got.ranges == [(90, 99), (10, 20)]
    assert (got.header.node, got.header.run, got.header.peer_run) == (NODE_B, RUN_B, RUN_A)


def test_hello_round_trip():
    got = protocol.decode(protocol.encode_hello(origin(NODE_B, RUN_B), 0, 1 << 62, 5))
    assert (got.stream, got.cookie, got.header.type) == (1 << 62, 5, protocol.HELLO)


def test_every_datagram_of_a_run_has_its_own_counter():
    sender = origin()
    counters = [protocol.decode(protocol.encode_hello(sender, 0, 1)).header.counter,
                protocol.decode(protocol.encode_ack(sender, 1, 1, 0, [])).header.counter]
    assert counters == [1, 2]


@pytest.mark.parametrize("raw, reason", [
    (b"", "truncated"),
    (b"ACK", "truncated"),
    (b"ACK 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "foreign"),
    (b"x" * 60000, "foreign"),
])
def test_garbage_is_rejected(raw, reason):
    with pytest.raises(protocol.BadDatagram, match=reason):
        protocol.decode(raw)


def test_every_single_bit_flip_is_detected():
    raw = data_datagram()
    for i in range(len(raw) * 8):
        corrupted = bytearray(raw)
        corrupted[i // 8] ^= 1 << (i % 8)
        with pytest.raises(protocol.BadDatagram):
            protocol.decode(bytes(corrupted))


def test_every_truncation_is_detected():
    raw = data_datagram()
    for n in range(len(raw)):
        with pytest.raises(protocol.BadDatagram):
            protocol.decode(raw[:n])


FRAME_AT = protocol.HEADER.size + protocol.DATA_HEAD.size


def test_frame_length_beyond_the_datagram_is_rejected_even_with_a_valid_checksum():
    raw = bytearray(data_datagram())
    at = FRAME_AT + protocol.FRAME.size - 2
    raw[at:at + 2] = struct.pack("!H", 5000)
    with pytest.raises(protocol.BadDatagram, match="malformed frame"):
        protocol.decode(reseal(bytes(raw)))


# Every integer field a receiver could not represent or store, with a valid checksum.
OUT_OF_RANGE = [
    ("header node 0", 8, "!Q", 0), ("header node 2^63", 8, "!Q", 1 << 63),
    ("header run 2^64-1", 16, "!Q", U64), ("header peer_run 2^63", 24, "!Q", 1 << 63),
    ("counter 0", 32, "!Q", 0), ("port 0", 6, "!H", 0),
    ("stream 2^64-1", protocol.HEADER.size, "!Q", U64),
    ("packet number 2^63", protocol.HEADER.size + 8, "!Q", 1 << 63),
    ("base 2^63", protocol.HEADER.size + 32, "!Q", 1 << 63),
    ("seq 2^64-1", FRAME_AT, "!Q", U64),
    ("seq below base", FRAME_AT, "!Q", 4),
    ("fragment count 0", FRAME_AT + 12, "!I", 0),
    ("total 0", FRAME_AT + 16, "!I", 0),
]


@pytest.mark.parametrize("what,at,fmt,value", OUT_OF_RANGE, ids=[o[0] for o in OUT_OF_RANGE])
def test_fields_out_of_range_are_rejected(what, at, fmt, value):
    raw = bytearray(data_datagram())
    struct.pack_into(fmt, raw, at, value)
    with pytest.raises(protocol.BadDatagram):
        protocol.decode(reseal(bytes(raw)))


def test_acks_with_too_many_or_reversed_ranges_are_rejected():
    for ranges in ([(1, 2)] * (protocol.MAX_ACK_RANGES + 1), [(5, 4)], [(0, 3)]):
        raw = protocol.encode_ack(origin(), RUN_B, 7, 1, ranges)
        with pytest.raises(protocol.BadDatagram):
            protocol.decode(raw)


def test_other_versions_and_sealed_datagrams_are_rejected():
    raw = bytearray(data_datagram())
    raw[3] = 1
    with pytest.raises(protocol.BadDatagram, match="older version"):
        protocol.decode(reseal(bytes(raw)))
    raw[3] = 3
    with pytest.raises(protocol.BadDatagram, match="unsupported version"):
        protocol.decode(reseal(bytes(raw)))
    raw[3] = protocol.VERSION
    raw[5] = protocol.FLAG_SEALED
    with pytest.raises(protocol.BadDatagram, match="sealed"):
        protocol.decode(reseal(bytes(raw)))


@pytest.mark.parametrize("kind,data", [
    (protocol.KIND_BLOB, b"\x00\xff"), (protocol.KIND_TEXT, "é".encode()),
    (protocol.KIND_INTEGER, -(1 << 63)), (protocol.KIND_INTEGER, (1 << 63) - 1),
    (protocol.KIND_REAL, math.inf), (protocol.KIND_REAL, -math.inf),
    (protocol.KIND_REAL, -0.0), (protocol.KIND_REAL, 5e-324), (protocol.KIND_NULL, None),
])
def test_message_round_trip_keeps_kind_token_and_value_exactly(kind, data):
    blob = protocol.encode_message(kind, None, b"2026-01-01 00:00:00", data)
    got = protocol.decode_message(blob)
    assert got == protocol.Message(kind, None, b"2026-01-01 00:00:00", data)
    assert str(got.data) == str(data)  # -0.0 stays -0.0
    assert protocol.decode_message(protocol.encode_message(kind, b"", b"", data)).token == b""


def test_malformed_messages_are_rejected():
    for blob in (protocol.MESSAGE_HEAD.pack(protocol.KIND_INTEGER, 0, 0, 0) + b"\x01",
                 protocol.MESSAGE_HEAD.pack(protocol.KIND_REAL, 0, 0, 0) + struct.pack(
                     "!d", math.nan),
                 protocol.MESSAGE_HEAD.pack(protocol.KIND_NULL, 0, 0, 0) + b"x",
                 protocol.MESSAGE_HEAD.pack(9, 0, 0, 0),
                 protocol.MESSAGE_HEAD.pack(protocol.KIND_TEXT, 0, 0, 3) + b"abc"):
        with pytest.raises(protocol.BadDatagram):
            protocol.decode_message(blob)


def test_default_datagrams_fit_the_size_limit_sealed_or_not():
    chunk = protocol.chunk_size(1200)
    frames = [(5, 0, 1, chunk, 0, b"x" * chunk)]
    assert len(data_datagram(frames)) == 1200 - protocol.SEAL_EXTRA
    sealed = protocol.encode_data(origin()._replace(sessions=sealing.Sessions()), None, RUN_B,
                                  7, 42, NODE_B, 99, 5, frames, key=bytes(32))
    assert len(sealed) == 1200


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=2000))
def test_decoder_never_fails_other_than_bad_datagram(raw):
    try:
        protocol.decode(raw)
    except protocol.BadDatagram:
        pass


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(min_value=0, max_value=10**6))
def test_mutated_valid_datagrams_are_rejected_or_parse_cleanly(tail, position):
    raw = bytearray(data_datagram())
    at = position % len(raw)
    raw[at:at + len(tail)] = tail
    for candidate in (bytes(raw), reseal(bytes(raw))):
        try:
            got = protocol.decode(candidate)
        except protocol.BadDatagram:
            continue
        assert got.header.type in protocol.TYPES
