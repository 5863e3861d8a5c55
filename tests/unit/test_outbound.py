"""Sending state of one destination: packing, acknowledgements, loss, backoff, cancel."""

import itertools

from tinymqd import protocol
from tinymqd.congestion import MIN_RTO_S, PACE_BURST
from tinymqd.outbound import OutMessage, OutStream

NODE, PEER, RUN = 0xA, 0xB, 0x1
ORIGIN = protocol.Origin(9000, NODE, RUN, itertools.count(1))
CHUNK = protocol.chunk_size(1200)


def stream_with(*sizes):
    st = OutStream(1, CHUNK)
    st.load_from = 1
    for seq, size in enumerate(sizes, start=1):
        st.add(OutMessage(seq, seq, b"m" * size, CHUNK))
    return st


def send_all(st, now=0.0):
    packets = []
    while st.can_send():
        packet = st.build_packet(1200, ORIGIN)
        if packet is None:
            return packets
        pn, datagram, frames = packet
        assert len(datagram) <= 1200
        st.record_sent(pn, frames, now)
        packets.append(protocol.decode(datagram))
    return packets


def ack(committed, ranges, run=7, refused=0):
    peer = protocol.Origin(9001, PEER, run, itertools.count(1))
    return protocol.decode(protocol.encode_ack(peer, RUN, 1, committed, ranges, refused,
                                               1000 if refused else 0))


def test_small_messages_share_a_datagram_and_carry_the_base():
    packets = send_all(stream_with(100, 100, 100))
    assert len(packets) == 1
    assert [f.seq for f in packets[0].frames] == [1, 2, 3]
    assert packets[0].base == 1 and packets[0].header.run == RUN


def test_large_message_is_fragmented_below_the_datagram_limit():
    packets = send_all(stream_with(5000))
    frames = [f for p in packets for f in p.frames]
    assert [f.frag for f in frames] == list(range(len(frames)))
    assert {f.nfrags for f in frames} == {len(frames)}
    assert b"".join(f.chunk for f in frames) == b"m" * 5000


def test_committed_ack_releases_exactly_the_named_messages():
    st = stream_with(10, 10, 10)
    send_all(st)
    assert st.on_ack(ack(3, [(1, 1)]), 0.01) == 3
    assert list(st.messages) == [3]
    assert st.base == 3


def test_packet_ack_without_commit_keeps_the_messages():
    st = stream_with(10, 10)
    send_all(st)
    assert st.on_ack(ack(0, [(1, 1)]), 0.01) is None
    assert list(st.messages) == [1, 2] and not st.sent


def test_gap_in_acknowledged_packets_is_retransmitted():
    st = stream_with(*[CHUNK] * 5)  # one message per packet
    send_all(st)
    st.on_ack(ack(0, [(3, 5), (1, 1)]), 0.01)  # packet 2 missing, 3 later ones in
    assert [(m.seq, f) for m, f in st.retx] == [(2, 0)]
    again = send_all(st, 0.02)
    assert [f.seq for p in again for f in p.frames] == [2]
    assert again[0].pn == 6  # a new packet number: RTT samples stay unambiguous


def test_timeouts_back_off_up_to_retry_max_and_then_probe_with_one_packet():
    st = stream_with(*[CHUNK] * 40)
    send_all(st)
    for _ in range(20):  # the peer never answers
        st.on_timeout(1.0, 1.0)
        probes = send_all(st, 1.0)
    assert len(probes) == 1  # after two timeouts in a row: one packet per retry
    assert MIN_RTO_S <= st.cc.current_rto() <= 1.0 + 1e-9


def test_a_lost_commit_acknowledgement_is_asked_for_again():
    st = stream_with(10)
    send_all(st)
    st.on_ack(ack(0, [(1, 1)]), 0.01)  # received, but the commit ack never comes
    assert st.timer is not None  # the stream waits for the commit with a timer
    st.on_timeout(st.timer, 1.0)
    again = send_all(st, 0.5)
    assert [(f.seq, f.frag) for p in again for f in p.frames] == [(1, 0)]
    assert st.on_ack(ack(2, [(2, 2)]), 0.51) == 2 and not st.messages


def test_unreachable_is_reported_once_after_a_while():
    st = stream_with(10)
    send_all(st, now=0.0)
    assert st.on_timeout(1.0, 1.0) is False
    assert st.on_timeout(3.5, 1.0) is True
    assert st.on_timeout(5.0, 1.0) is False  # once per change, not per retry


def test_peer_restart_resends_what_it_held_but_had_not_committed():
    st = stream_with(10, 10)
    send_all(st)
    st.on_ack(ack(0, [(1, 1)], run=7), 0.01)
    assert not send_all(st)
    st.on_ack(ack(0, [], run=8), 0.02)  # a new boot id: its memory is gone
    assert [f.seq for p in send_all(st) for f in p.frames] == [1, 2]


def test_cancel_moves_the_base_past_deleted_rows():
    st = stream_with(10, 10, 10)
    st.cancel([1, 2])
    packets = send_all(st)
    assert packets[0].base == 3
    assert [f.seq for f in packets[0].frames] == [3]


def test_ack_cannot_release_more_than_was_sent_by_ranges():
    st = stream_with(10)
    send_all(st)
    st.on_ack(ack(0, [(1, (1 << 63) - 1)]), 0.01)  # absurd range: clamped, no crash
    assert not st.sent and list(st.messages) == [1]


def test_a_window_is_paced_not_sent_as_one_burst():
    st = stream_with(*[CHUNK] * 200)
    st.cc.cwnd = 100
    send_all(st, now=0.0)  # before any RTT sample: no pacing information yet
    st.on_ack(ack(0, [(1, 100)]), 0.010)  # srtt is now 10 ms
    burst = 0
    while st.can_send() and st.may_send_at(0.010):
        pn, _, frames = st.build_packet(1200, ORIGIN)
        st.record_sent(pn, frames, 0.010)
        burst += 1
    assert 1 <= burst <= PACE_BURST + 1
    later = 0.010 + 10 * st.cc.srtt / st.cc.cwnd
    assert st.may_send_at(later)  # the rest follows at window / RTT


def test_a_refused_message_leaves_the_stream_and_is_reported():
    st = stream_with(10, 10, 10)
    send_all(st)
    st.on_ack(ack(0, [(1, 1)], refused=2), 0.01)
    assert st.refused == [(2, 1000)] and list(st.messages) == [1, 3]
    assert [f.seq for p in send_all(st, 0.5) for f in p.frames] == []
    st.cancel([1])
    assert st.base == 3
