"""The wire format: round trips, and rejection of anything not intact."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from tests.support.wire import reseal
from tinymqd import protocol

NODE_A, NODE_B = 0x1111, 0x2222


def data_datagram(frames=((5, 0, 1, b"hello"),), base=5):
    return protocol.encode_data(9000, NODE_A, NODE_B, 7, 99, 42, base, frames)


def test_data_round_trip():
    frames = [(5, 0, 1, b"a:b\nc"), (6, 2, 3, bytes(range(256)))]
    got = protocol.decode(data_datagram(frames, base=4))
    assert got.header == protocol.Header(protocol.DATA, 0, 9000, NODE_A, NODE_B)
    assert (got.stream, got.boot, got.pn, got.base) == (7, 99, 42, 4)
    assert [tuple(f) for f in got.frames] == frames


def test_ack_round_trip():
    raw = protocol.encode_ack(9001, NODE_B, NODE_A, 7, 100, 0xDEAD, [(90, 99), (10, 20)])
    got = protocol.decode(raw)
    assert (got.stream, got.committed, got.boot) == (7, 100, 0xDEAD)
    assert got.ranges == [(90, 99), (10, 20)]
    assert got.header.dst == NODE_A


def test_hello_round_trip():
    got = protocol.decode(protocol.encode_hello(9001, NODE_B, NODE_A, 77))
    assert got.boot == 77 and got.header.type == protocol.HELLO


@pytest.mark.parametrize("raw, reason", [
    (b"", "truncated"),
    (b"ACK", "truncated"),
    (b"ACK 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16", "foreign"),
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


def test_frame_length_beyond_the_datagram_is_rejected_even_with_a_valid_checksum():
    raw = bytearray(data_datagram())
    frame_len_at = protocol.HEADER.size + protocol.DATA_HEAD.size + 16
    raw[frame_len_at:frame_len_at + 2] = struct.pack("!H", 5000)
    with pytest.raises(protocol.BadDatagram, match="malformed frame"):
        protocol.decode(reseal(bytes(raw)))


def test_other_versions_and_sealed_datagrams_are_rejected():
    raw = bytearray(data_datagram())
    raw[3] = 2
    with pytest.raises(protocol.BadDatagram, match="version"):
        protocol.decode(reseal(bytes(raw)))
    raw[3] = 1
    raw[5] = protocol.FLAG_SEALED
    with pytest.raises(protocol.BadDatagram, match="sealed"):
        protocol.decode(reseal(bytes(raw)))


def test_message_round_trip_keeps_kind_token_and_bytes():
    blob = protocol.encode_message(protocol.KIND_BLOB, None, b"2026-01-01 00:00:00",
                                   b"\x00\xff")
    assert protocol.decode_message(blob) == protocol.Message(
        protocol.KIND_BLOB, None, b"2026-01-01 00:00:00", b"\x00\xff")
    blob = protocol.encode_message(protocol.KIND_TEXT, b"", b"", b"")
    assert protocol.decode_message(blob).token == b""


def test_default_datagrams_fit_the_size_limit():
    chunk = protocol.chunk_size(1200)
    raw = data_datagram([(1, 0, 1, b"x" * chunk)])
    assert len(raw) == 1200


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
    raw = bytearray(data_datagram([(1, 0, 1, b"payload" * 10)]))
    at = position % len(raw)
    raw[at:at + len(tail)] = tail
    for candidate in (bytes(raw), reseal(bytes(raw))):
        try:
            got = protocol.decode(candidate)
        except protocol.BadDatagram:
            continue
        assert got.header.type in (protocol.DATA, protocol.ACK, protocol.HELLO)
