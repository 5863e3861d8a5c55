"""Keyed peers: sealing and opening datagrams, session keys, replays, which key a peer
uses, and the gate's cookies."""

import itertools

import pytest

from tinymqd import gate, keys, protocol, sealing

KEY1, KEY2 = bytes(range(32)), bytes(range(1, 33))


def origin(node, run):
    return protocol.Origin(9000, node, run, itertools.count(1), sealing.Sessions())


def hello(sender, key, peer_run=0):
    return protocol.encode_hello(sender, peer_run, 1 << 40, 77, key)


def test_a_sealed_datagram_opens_with_the_key_and_says_which():
    raw = hello(origin(5, 6), KEY1, peer_run=9)
    got = protocol.decode(raw, lambda: [("old", KEY2), ("new", KEY1)], sealing.Sessions())
    assert (got.stream, got.cookie, got.header.key, got.header.peer_run) == (1 << 40, 77,
                                                                             "new", 9)
    assert b"\x00\x00\x01\x00\x00\x00\x00\x00" not in raw[protocol.HEADER.size:]  # encrypted


@pytest.mark.parametrize("change", ["header", "body", "tag", "salt"])
def test_any_change_to_a_sealed_datagram_is_detected(change):
    raw = bytearray(hello(origin(5, 6), KEY1))
    at = {"header": 20, "body": protocol.HEADER.size + 6, "tag": len(raw) - 1,
          "salt": protocol.HEADER.size}[change]
    raw[at] ^= 1
    with pytest.raises(protocol.BadDatagram, match="not authentic|range"):
        protocol.decode(bytes(raw), lambda: [("k", KEY1)], sealing.Sessions())


def test_another_key_or_no_key_cannot_open_it():
    raw = hello(origin(5, 6), KEY1)
    with pytest.raises(protocol.BadDatagram, match="not authentic"):
        protocol.decode(raw, lambda: [("k", KEY2)], sealing.Sessions())
    with pytest.raises(protocol.BadDatagram, match="no key"):
        protocol.decode(raw, lambda: [], sealing.Sessions())


def test_session_keys_differ_per_pair_of_runs_and_nonces_never_repeat():
    sessions = sealing.Sessions()
    assert sessions.get(KEY1, 1, 2) is sessions.get(KEY1, 1, 2)
    assert sessions.get(KEY1, 1, 2) is not sessions.get(KEY1, 2, 1)
    sender = origin(5, 6)
    counters = {protocol.decode(hello(sender, None)).header.counter for _ in range(100)}
    assert len(counters) == 100


def test_the_replay_window_accepts_each_counter_once_and_reordering_within_it():
    window = sealing.ReplayWindow()
    assert all(window.fresh(1, 2, c) for c in (5, 3, 4, 10, 9))
    assert not any(window.fresh(1, 2, c) for c in (5, 3, 10))
    assert window.fresh(1, 3, 5)  # another run: its own counters
    assert window.fresh(1, 2, 10 + sealing.REPLAY_WINDOW)
    assert not window.fresh(1, 2, 9)  # now too old to tell: refused


def test_the_most_specific_peers_entry_wins():
    peer_keys = keys.PeerKeys({"hostb": ["a"], "10.0.0.0/8": ["b"], "10.1.0.0/16": ["c"],
                               "10.1.2.3": ["d"], "*": ["e"]},
                              {n: bytes([i]) * 32 for i, n in enumerate("abcde")})
    names = lambda pairs: [n for n, _ in pairs]  # noqa: E731
    assert names(peer_keys.for_destination("HostB", "192.0.2.1")) == ["a"]
    assert names(peer_keys.for_source("10.1.2.3")) == ["d"]
    assert names(peer_keys.for_source("::ffff:10.1.9.9")) == ["c"]
    assert names(peer_keys.for_source("10.9.9.9")) == ["b"]
    assert names(peer_keys.for_source("192.0.2.1")) == ["e"]
    peer_keys.refresh(lambda *a: [(2, 2, 17, "", ("192.0.2.7", 0))])
    assert names(peer_keys.for_source("192.0.2.7")) == ["a"]  # hostb's address


def test_cookies_depend_on_the_address_and_the_run_secret():
    first = gate.Gate(origin(5, 6), keys.PeerKeys({}, {}), False, None)
    second = gate.Gate(origin(5, 7), keys.PeerKeys({}, {}), False, None)
    addr = ("::ffff:10.0.0.1", 9000, 0, 0)
    assert first.cookie(addr) == first.cookie(addr) != first.cookie(("::ffff:10.0.0.1", 9001))
    assert first.cookie(addr) != second.cookie(addr)
    assert 0 < first.cookie(addr) <= protocol.MAX_ID
