"""The attacker's view of wire protocol v2 (SPEC guarantees 8, 10 and 11; PROTOCOL.md
"Threat model", "Bounded resources", "Keyed peers"): black-box tests over real UDP
against real daemons, each playing one attacker and asserting what the attack must not
achieve: no row created, no row deleted that was not delivered, no crash (daemons alive,
no Traceback in their logs), memory and replies within their bounds, and the real
traffic still delivered exactly once, in order.

What the attackers know. An off-path attacker (unkeyed mode's adversary) does not see
the traffic between two daemons, but can send datagrams from anywhere (here: sockets of
its own on 127.0.0.0/8, the relay's ports that stand for a peer's address, and, as root,
any source address through a raw socket: relay.send_spoofed) and receives what is sent
to its own addresses. So it learns, by sending a DATA and reading the HELLO that comes
back, any daemon's node id and run id and the cookie of its own address; node ids are
also no secret (mqin.sender). What it cannot learn is a stream id (63 random bits, sent
only between the two peers) and the cookie of another address: those are what the tests
check stand between it and the rows. Having completed that cookie round trip, it may
open streams of its own from its own address (like any client of an open mail server,
PROTOCOL.md): within the bounds of "Bounded resources", and never into another's.
Without root (no raw socket) the forged-source sends go from strangers instead.

Out of scope, per the threat model: in unkeyed mode, whoever sees the traffic (on-path)
can read, change and forge it (a captured DATA altered and sent from the real sender's
address, an ACK built from a captured stream id). Where a test below sends captured real
datagrams from the real peer's address, it is to check a rule that must hold even then
(a duplicate never replaces a stored message, a message is stored as one whole real
version) or in keyed mode, where on-path attackers are in scope.
"""

import base64
import collections
import os
import random
import socket
import struct
import time
import zlib

import pytest

from tests.support import db as dbmod, wire
from tests.support.checks import assert_handoff, assert_series_delivered
from tests.support.observe import LogMark, rss_bytes
from tests.support.ports import udp_socket
from tests.support.relay import can_spoof, send_spoofed
from tests.support.wait import holds_for, wait_until

RATE = 8000.0  # forged datagrams per second: the pace of test_adversity's flood
U16 = (0, 1, 1 << 15, (1 << 16) - 1)
U32 = (0, 1, 1 << 31, (1 << 32) - 1)
U64 = (0, 1, 1 << 31, (1 << 32) - 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
MAX_ID = wire.MAX_ID
SPOOF = can_spoof()


# -- helpers -------------------------------------------------------------------------------

def pace(n, t0, rate=RATE):
    """Keep a flood at `rate` datagrams a second (every 200): the daemons read what comes
    instead of the kernel dropping it."""
    if n % 200 == 199:
        ahead = t0 + (n + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # pacing the flood, not waiting for a condition


def assert_no_crash(marks):
    """Every daemon alive, and no Traceback in its log since its mark."""
    for d, mark in marks.items():
        d.assert_alive()
        text = mark.text()
        assert "Traceback" not in text, f"{d.name} logged a traceback:\n{text[-3000:]}"


def xs(d, table, where="1", params=()):
    return {x for (x,) in d.query(f"SELECT x FROM {table} WHERE {where}", params)}


def stranger(host="127.0.0.1"):
    s = udp_socket(host)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return s


def send(sock, datagram, addr):
    try:
        sock.sendto(datagram, addr)
    except OSError:
        pass  # e.g. a full send buffer: that one is simply not sent


def node_id(d):
    return d.query("SELECT value FROM tinymq_meta WHERE key='node_id'")[0][0]


def learn(d, rng, host="127.0.0.2"):
    """What any prober learns about a daemon: a DATA from a socket of its own, and the
    HELLO that comes back carries the daemon's node id and run id (and the cookie of the
    prober's address). Returns the wire.Client after its handshake."""
    return wire.Client(host, rng).handshake(("127.0.0.1", d.port))


def plausible_ids(rng, known):
    """A stream id as an attacker who does not see the traffic would try: random, small,
    or one of the values it knows (node and run ids, ports, their neighbours)."""
    pick = rng.random()
    if pick < 0.4:
        return rng.randrange(1, MAX_ID + 1)
    if pick < 0.6:
        return rng.randrange(1, 1000)
    value = rng.choice(known)
    return min(MAX_ID, max(1, value + rng.choice((-1, 0, 0, 1))))


def text_message(data, token="tok", sent=b"2026-01-01 00:00:00"):
    return wire.message(3, token.encode(), sent, data.encode())


# -- 1. forged acknowledgements from off-path ------------------------------------------------

@pytest.mark.timeout(90)
def test_forged_ack_spray_from_off_path_deletes_nothing(make_daemon, make_relay, make_sink):
    """Rows wait for a destination that is down (a relay that drops everything towards
    B, and a mute peer): 8,000 well-formed ACKs and HELLOs with random and plausible
    stream ids, runs (A's real run: any prober learns it), committed points, refusals and
    ranges, from strangers, from the address A sends to (the relay's port, the mute peer's
    own socket) and, spoofed, from B's real address. None may delete, refuse or skip a
    row; once B is reachable again every row arrives exactly once, in order. A control at
    the end proves the forgeries were otherwise valid: the same ACK with the real stream
    id (which only the peers know) deletes its row."""
    rng = random.Random(101)
    a, b = make_daemon("a").start(), make_daemon("b").start()
    marks = {a: LogMark(a), b: LogMark(b)}
    relay = make_relay(("127.0.0.1", b.port))
    sink = make_sink()
    wire.exchange(a, b, relay, "warm", [f"warm-{i:06d}" for i in range(1, 6)])
    relay.set_faults("forward", loss=100)  # B is down for A from now on
    dbmod.enqueue_series(a.db, "127.0.0.1", relay.port, "wait", 60)
    x_mute = a.enqueue(sink.port, "mute", "mute-000001")
    wait_until(lambda: relay.snapshot()["forward"]["dropped"] >= 3 and sink.count() >= 1, 10,
               "A sends to the cut-off B and to the mute peer")
    waiting = xs(a, "mqout")
    in_b = b.count("mqin")
    seqs = [s for (s,) in a.query("SELECT seq FROM mqout WHERE seq IS NOT NULL")]
    top = max(seqs) + 1
    pa, pb = learn(a, rng), learn(b, rng)
    a_node, a_run, b_node, b_run = pa.peer_node, pa.peer_run, pb.peer_node, pb.peer_run
    assert (a_node, b_node) == (node_id(a), node_id(b)), "the probes learned who A and B are"
    known = [a_node, a_run, b_node, b_run, relay.port, sink.port, a.port, b.port, top]

    def forged_ack():
        committed = rng.choice((top, top + 1, rng.randrange(1, top + 2), MAX_ID,
                                rng.randrange(1, MAX_ID + 1)))
        refused, limit = (0, 0) if rng.random() < 0.7 else (rng.choice(seqs), rng.choice(
            (1, 100, 1 << 20)))
        ranges = rng.choice(([], [(1, 1)], [(1, rng.randrange(1, 200))],
                             sorted(((lo, lo + rng.randrange(0, 5)) for lo in
                                     rng.sample(range(1, 10000), rng.randrange(1, 33))),
                                    reverse=True)))
        peer_run = a_run if rng.random() < 0.8 else rng.choice((rng.randrange(1, MAX_ID), b_run))
        return wire.seal(wire.header(wire.ACK, rng.choice((b.port, relay.port, sink.port)),
                                     rng.choice((b_node, b_node, rng.randrange(1, MAX_ID))),
                                     rng.choice((b_run, b_run, rng.randrange(1, MAX_ID))),
                                     peer_run, rng.randrange(1, 1 << 40))
                         + wire.ack_body(plausible_ids(rng, known), committed, ranges, refused,
                                         limit))

    def forged_hello():
        return wire.seal(wire.header(wire.HELLO, rng.choice((b.port, relay.port)),
                                     rng.randrange(1, MAX_ID), rng.randrange(1, MAX_ID),
                                     rng.choice((0, a_run)), rng.randrange(1, 1 << 40))
                         + wire.hello_body(plausible_ids(rng, known), rng.randrange(0, 1 << 64)))

    strangers = [stranger("127.0.0.1"), stranger("127.0.0.5")]
    kinds = collections.Counter()
    t0 = time.monotonic()
    for n in range(8000):
        datagram = forged_ack() if rng.random() < 0.85 else forged_hello()
        where = rng.choice(("stranger", "relay_port", "mute_peer", "spoofed_b"))
        if where == "stranger":
            send(rng.choice(strangers), datagram, ("127.0.0.1", a.port))
        elif where == "relay_port":  # where A sends B's rows: B's address, to A
            relay.send_from_listening_port(datagram, ("127.0.0.1", a.port))
        elif where == "mute_peer":
            sink.send(datagram, ("127.0.0.1", a.port))
        elif SPOOF:  # B's own address and port, forged: B still holds that port
            send_spoofed(datagram, ("127.0.0.1", b.port), ("127.0.0.1", a.port))
        else:
            where = "spoofed_b (not root: not sent)"
        kinds[where] += 1
        pace(n, t0)
    print(f"\nforged ACKs and HELLOs by source: {dict(kinds)}")
    pa.sync(), pb.sync()  # A has read them all (the prober's DATA came after them)
    holds_for(lambda: xs(a, "mqout") == waiting and a.count("mqin") == 0
              and b.count("mqin") == in_b
              and not a.count("mqout", "last_error LIKE '%refuse%'"), 1.5,
              "the forgeries deleted, refused or created no row",
              describe=lambda: f"A's mqout lost {sorted(waiting - xs(a, 'mqout'))[:8]}; "
                               f"{a.query('SELECT x, last_error FROM mqout LIMIT 3')}")
    assert_no_crash(marks)
    relay.set_faults("forward", loss=0)
    assert_series_delivered(a, b, "wait", 60, timeout=20)
    assert b.count("mqin") == in_b + 60 and a.count("mqin") == 0
    assert a.count("mqout", "x=?", (x_mute,)) == 1
    # Control: the same kind of ACK with what only the peers know, the stream id (read
    # here from A's database) and its tag (from A's DATA the mute peer received), and
    # A's run as the prober learned it, deletes the mute row.
    (stream, seq), = a.query("SELECT stream, seq FROM mqout WHERE x=?", (x_mute,))
    tag = next(wire.data_tag(d) for d in sink.datagrams()
               if wire.problem(d) is None and wire.fields(d)["type"] == wire.DATA
               and wire.data_fields(d)[0] == stream)
    send(strangers[1], wire.seal(wire.header(wire.ACK, sink.port, rng.randrange(1, MAX_ID),
                                             rng.randrange(1, MAX_ID), a_run, 7)
                                 + wire.ack_body(stream, seq + 1, [], tag=tag)),
         ("127.0.0.1", a.port))
    wait_until(lambda: a.count("mqout", "x=?", (x_mute,)) == 0, 5,
               "control: an ACK that names the real stream and its tag and A's run is taken "
               "(so the spray's ACKs were well-formed: only the stream id and tag stopped "
               "them)")
    assert_no_crash(marks)


# -- 2. forged DATA --------------------------------------------------------------------------

def altered(datagram, rng):
    """A captured DATA whose messages say something else: every single-fragment message's
    data replaced (its message CRC and the datagram's CRC recomputed)."""
    stream, pn, dst, cookie, base, frames = wire.data_fields(datagram)
    out = []
    for seq, frag, nfrags, total, mcrc, chunk in frames:
        if nfrags == 1:
            chunk = chunk[:-6] + b"FORGED"[:min(6, len(chunk))] if len(chunk) > 6 else chunk
            total, mcrc = len(chunk), zlib.crc32(chunk)
        else:
            chunk = bytes(rng.randrange(256) for _ in chunk)
        out.append((seq, frag, nfrags, total, mcrc, chunk))
    return wire.seal(datagram[:wire.HEADER.size] + wire.data_body(stream, pn, base, out, dst,
                                                                  cookie))


@pytest.mark.timeout(90)
def test_forged_data_cannot_skip_replace_or_inject_into_a_stream(make_daemon, make_relay):
    """A's messages 31..60 wait (the link to B drops them) while an attacker who knows A's
    node id, B's run and the cookie of its own address sends DATA meant to get into A's
    stream: base skips and forged messages at the numbers B expects next, under guessed
    stream ids, from a validated address of its own; the same with A's real stream id
    (more than an off-path attacker can know) from strangers and, spoofed, from A's
    address and from the address B knows A at, without that address's cookie; DATA with
    A's node id and new streams from those spoofed sources; and captured real frames with
    altered content (for messages B has stored, even from the real sender's address). B
    creates no row, and once the link is back 1..60 arrive exactly once, in order, as A
    sent them."""
    rng = random.Random(202)
    a, b = make_daemon("a").start(), make_daemon("b").start()
    marks = {a: LogMark(a), b: LogMark(b)}
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    forward, _ = wire.exchange(a, b, relay, "s", [f"s-{i:06d}" for i in range(1, 31)])
    relay.set_faults("forward", loss=100)
    relay.reset_stats()
    dbmod.enqueue_many(a.db, [("127.0.0.1", relay.port, "s", f"s-{i:06d}")
                              for i in range(31, 61)])
    wait_until(lambda: relay.snapshot()["forward"]["dropped"] >= 3, 10, "A sends 31.. (dropped)")
    pending = relay.captured("forward")
    stored, pending = ([d for d in captured if wire.problem(d) is None
                        and wire.fields(d)["type"] == wire.DATA] for captured in (forward, pending))
    assert stored and pending, "captured A's DATA"
    in_b, waiting = b.count("mqin"), xs(a, "mqout")
    (real_stream,), = set(a.query("SELECT DISTINCT stream FROM mqout"))
    attacker = learn(b, rng, "127.0.0.6")  # validated: the cookie of its own address
    a_node, b_node, b_run = node_id(a), attacker.peer_node, attacker.peer_run
    a_via_relay = relay.upstream_address(("127.0.0.1", a.port))  # A, as B sees it
    known = [a_node, b_node, b_run, a.port, b.port, relay.port, attacker.run]
    strangers = [stranger("127.0.0.1"), stranger("127.0.0.7")]

    def forged(stream, base, seq, cookie, node=a_node, nfrags=1):
        blob = text_message(f"s-{seq:06d} FORGED", token="s")
        frames = [wire.frame(seq, blob)] if nfrags == 1 else \
            [wire.frame(seq, blob, frag=0, nfrags=nfrags, chunk=blob[:5])]
        return wire.seal(wire.header(wire.DATA, a.port, node, rng.randrange(1, MAX_ID), b_run,
                                     rng.randrange(1, 1 << 40))
                         + wire.data_body(stream, rng.randrange(1, 1 << 20), base, frames,
                                          rng.choice((0, b_node)), cookie))

    kinds = collections.Counter()
    t0 = time.monotonic()
    for n in range(6000):
        kind = rng.choice(("guessed_stream", "real_stream_no_cookie", "new_stream_spoofed",
                           "altered_capture"))
        if kind == "guessed_stream":
            # From its own validated address: a base skip, or a forged message at a number
            # B waits for. Never the first missing number of the stream it names: in a
            # stream of the attacker's own (a wrong guess) that would store a message,
            # which is allowed and not what is tested; so no seq below is ever a base.
            base = rng.choice((31, 40, 61, 1000, 1 << 40))
            seq = base + rng.choice((1, 2, 5))
            attacker.send(attacker.data(plausible_ids(rng, known), base, [wire.frame(
                seq, text_message(f"s-{seq:06d} FORGED", token="s"))], node=a_node,
                dst=rng.choice((0, b_node))))
        elif kind == "real_stream_no_cookie":
            base = rng.choice((31, 31, 32, 45, 1 << 30))
            cookie = rng.choice((0, attacker.cookie, rng.randrange(1, MAX_ID)))
            d = forged(real_stream, base, rng.choice((base, base + 1)), cookie,
                       nfrags=rng.choice((1, 1, 3)))
            source = rng.choice(("stranger", "spoof_a", "spoof_a_via_relay"))
            kind += "/" + source
            if source == "stranger" or not SPOOF:
                send(rng.choice(strangers), d, ("127.0.0.1", b.port))
            else:
                send_spoofed(d, ("127.0.0.1", a.port) if source == "spoof_a" else a_via_relay,
                             ("127.0.0.1", b.port))
        elif kind == "new_stream_spoofed":
            d = forged(rng.randrange(1, MAX_ID), 1, 1, rng.choice((0, rng.randrange(1, MAX_ID))))
            if SPOOF:
                send_spoofed(d, rng.choice((("127.0.0.1", a.port), a_via_relay)),
                             ("127.0.0.1", b.port))
            else:
                send(rng.choice(strangers), d, ("127.0.0.1", b.port))
        else:
            if rng.random() < 0.5:  # a message B stored, from the real sender's address
                relay.send_upstream(altered(rng.choice(stored), rng), ("127.0.0.1", a.port))
                kind += "/stored_from_real_address"
            else:  # a message B waits for, from elsewhere
                d = altered(rng.choice(pending), rng)
                if SPOOF and rng.random() < 0.5:
                    send_spoofed(d, ("127.0.0.1", a.port), ("127.0.0.1", b.port))
                    kind += "/pending_spoofed_a"
                else:
                    send(rng.choice(strangers), d, ("127.0.0.1", b.port))
                    kind += "/pending_stranger"
        kinds[kind] += 1
        pace(n, t0)
    print(f"\nforged DATA: {dict(kinds)}")
    attacker.sync()
    holds_for(lambda: b.count("mqin") == in_b and xs(a, "mqout") == waiting, 1.5,
              "forged DATA created no row at B and A lost none",
              describe=lambda: "B's newest rows: " + str(b.query(
                  "SELECT shost, sender, seq, data FROM mqin ORDER BY x DESC LIMIT 3")))
    assert_no_crash(marks)
    relay.set_faults("forward", loss=0)
    assert_series_delivered(a, b, "s", 60, timeout=20)
    got = b.query("SELECT data, sender, seq FROM mqin WHERE token='s' ORDER BY x")
    assert [d for d, _s, _q in got] == [f"s-{i:06d}" for i in range(1, 61)], "content changed"
    assert {s for _d, s, _q in got} == {f"{a_node:016x}"}, "stored as another sender's"
    assert b.count("mqin") == 60, f"rows besides A's: {b.query('SELECT data FROM mqin')[60:65]}"
    assert_no_crash(marks)


# -- the top of the sequence number range ------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_message_numbered_at_the_top_of_the_range_does_not_crash_the_receiver(make_daemon):
    """Sequence numbers may be up to 2^63 - 1 (PROTOCOL.md). A client of its own (which
    anyone may be: it only has to receive at its address) sends one DATA on a new stream
    with base = seq = 2^63 - 1 and a whole message: B must not crash (store it or refuse
    it; the committed point after it, 2^63, does not fit SQLite's INTEGER)."""
    rng = random.Random(303)
    b = make_daemon("b").start()
    mark = LogMark(b)
    c = learn(b, rng, "127.0.0.8")
    c.send(c.data(rng.randrange(1, MAX_ID), MAX_ID, [wire.frame(MAX_ID, text_message("top"))]))
    c.sync()  # handled; the writer commits right after
    holds_for(lambda: b.running, 1.5, "B keeps running")
    assert_no_crash({b: mark})


# -- 3. extreme values in every integer field --------------------------------------------------

# (field, struct format, offset) of every integer field past the magic and version
HEADER_FIELDS = [("type", "B", 4), ("flags", "B", 5), ("port", "H", 6), ("node", "Q", 8),
                 ("run", "Q", 16), ("peer_run", "Q", 24), ("counter", "Q", 32)]
_H = wire.HEADER.size
DATA_FIELDS = [("stream", "Q", _H), ("pn", "Q", _H + 8), ("dst", "Q", _H + 16),
               ("cookie", "Q", _H + 24), ("base", "Q", _H + 32), ("seq", "Q", _H + 40),
               ("frag", "I", _H + 48), ("nfrags", "I", _H + 52), ("total", "I", _H + 56),
               ("crc", "I", _H + 60), ("len", "H", _H + 64)]
ACK_FIELDS = [("stream", "Q", _H), ("committed", "Q", _H + 8), ("refused", "Q", _H + 16),
              ("limit", "Q", _H + 24), ("count", "H", _H + 32), ("low", "Q", _H + 34),
              ("high", "Q", _H + 42)]
HELLO_FIELDS = [("stream", "Q", _H), ("cookie", "Q", _H + 8)]
LAYOUT = {wire.DATA: DATA_FIELDS, wire.ACK: ACK_FIELDS, wire.HELLO: HELLO_FIELDS}
# the encoded message inside a whole single-fragment frame (after the 26-byte frame head)
_M = _H + 40 + wire.FRAME.size
MESSAGE_FIELDS = [("kind", "B", _M), ("has_token", "B", _M + 1), ("ts_len", "H", _M + 2),
                  ("token_len", "I", _M + 4)]
VALUES = {"B": (0, 1, 5, 255), "H": U16, "I": U32, "Q": U64}


def extremes(template, fields=None):
    """(field, value, datagram) for every integer field of the template (header and
    body; `fields` to choose) set to each extreme value of its size, CRC recomputed."""
    kind = wire.fields(template)["type"]
    for name, fmt, at in fields or HEADER_FIELDS + LAYOUT[kind]:
        for value in VALUES[fmt]:
            d = bytearray(template)
            struct.pack_into("!" + fmt, d, at, value)
            yield name, value, wire.reseal(bytes(d))


@pytest.mark.timeout(90)
def test_extreme_values_in_every_field_from_off_path_are_contained(make_daemon, make_relay,
                                                                  make_sink):
    """Field by field, every integer of DATA, ACK and HELLO (header and body) set to 0, 1,
    2^31, 2^32 - 1, 2^63 - 1, 2^63, 2^64 - 1 (u16: 0, 1, 2^15, 2^16 - 1; u8: 0, 1, 5,
    255) with a valid CRC, the rest as plausible as an off-path attacker can make it (the
    daemons' real node and run ids: any prober learns them), sent to A and B from
    strangers, from the address A sends B's rows to and, spoofed, from B's; plus
    wire.Hostile's out_of_range variants of captured real datagrams, from the real peers'
    addresses: about 7,000 datagrams while real traffic flows both ways. No row is created
    or deleted, no daemon crashes, and the real messages arrive exactly once, in order."""
    rng = random.Random(404)
    a, b = make_daemon("a").start(), make_daemon("b").start()
    marks = {a: LogMark(a), b: LogMark(b)}
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    sink = make_sink()
    x_mute = a.enqueue(sink.port, "mute", "mute-000001")
    forward, reverse = wire.exchange(a, b, relay, "warm", [f"warm-{i:06d}" for i in range(1, 21)]
                                     + ["w" * 5000])
    wait_until(lambda: sink.count() >= 1, 10, "A sends to the mute peer")
    corpus = forward + reverse + sink.datagrams()
    hostile = wire.Hostile(rng, corpus)
    pa, pb = learn(a, rng), learn(b, rng)
    a_node, a_run, b_node, b_run = pa.peer_node, pa.peer_run, pb.peer_node, pb.peer_run
    msg = text_message("extreme")

    def templates():
        """To B and to A: DATA from a stranger's stream, ACK and HELLO for a guessed stream,
        each echoing the target's real run."""
        out = []
        for (node, port, tnode, trun) in ((a_node, a.port, b_node, b_run),
                                          (b_node, b.port, a_node, a_run)):
            def head(kind, peer_run=trun):
                return wire.header(kind, port, node, rng.randrange(1, MAX_ID), peer_run,
                                   rng.randrange(1, 1 << 40))
            out.append((tnode, wire.seal(head(wire.DATA) + wire.data_body(
                rng.randrange(1, MAX_ID), rng.randrange(1, 100), 1, [wire.frame(1, msg)],
                tnode, rng.randrange(1, MAX_ID)))))
            out.append((tnode, wire.seal(head(wire.ACK) + wire.ack_body(
                rng.randrange(1, MAX_ID), rng.randrange(1, 100), [(1, 5)]))))
            out.append((tnode, wire.seal(head(wire.HELLO, rng.choice((0, trun))) + wire.hello_body(
                rng.randrange(1, MAX_ID), rng.randrange(1, MAX_ID)))))
        return out

    strangers = [stranger("127.0.0.1"), stranger("127.0.0.10")]
    target_of = {a_node: a, b_node: b}

    def from_anywhere(d, target):
        where = rng.choice(("stranger", "stranger", "peer_address", "spoofed"))
        if where == "peer_address" and target is a:
            relay.send_from_listening_port(d, ("127.0.0.1", a.port))
        elif where == "peer_address":
            relay.send_upstream(d, ("127.0.0.1", a.port))
        elif where == "spoofed" and SPOOF:
            send_spoofed(d, ("127.0.0.1", (b if target is a else a).port),
                         ("127.0.0.1", target.port))
        else:
            send(rng.choice(strangers), d, ("127.0.0.1", target.port))

    dbmod.enqueue_series(a.db, "127.0.0.1", relay.port, "ab", 300)
    dbmod.enqueue_series(b.db, "127.0.0.1", a.port, "ba", 150)
    fields_hit = collections.Counter()
    n = 0
    t0 = time.monotonic()
    for rep in range(10):
        if rep == 5:
            dbmod.enqueue_series(a.db, "127.0.0.1", relay.port, "ab", 300, start=301)
            dbmod.enqueue_series(b.db, "127.0.0.1", a.port, "ba", 150, start=151)
        for tnode, template in templates():
            for name, _value, d in extremes(template):
                from_anywhere(d, target_of[tnode])
                fields_hit[f"{wire.fields(template)['type']}:{name}"] += 1
                n += 1
                pace(n, t0)
        for _ in range(250):  # out-of-range variants of real datagrams, from the real peers
            d = hostile.out_of_range()
            if wire.fields(d)["type"] == wire.DATA:  # A's, to B from where A's come from
                relay.send_upstream(d, ("127.0.0.1", a.port))
            else:  # B's answers, to A from where B's answers come from
                relay.send_from_listening_port(d, ("127.0.0.1", a.port))
            n += 1
            pace(n, t0)
    print(f"\n{n} datagrams in {time.monotonic() - t0:.1f} s; fields: {len(fields_hit)}")
    pa.sync(), pb.sync()
    assert_series_delivered(a, b, "ab", 600, timeout=30)
    assert_series_delivered(b, a, "ba", 300, timeout=30)
    assert dict(b.query("SELECT token, count(*) FROM mqin GROUP BY token")) == \
        {"warm": 21, "ab": 600}, "rows created at B"
    assert dict(a.query("SELECT token, count(*) FROM mqin GROUP BY token")) == {"ba": 300}, \
        "rows created at A"
    assert a.query("SELECT x FROM mqout") == [(x_mute,)], "A's waiting row was removed"
    assert_no_crash(marks)


@pytest.mark.timeout(90)
def test_extreme_values_in_a_validated_stream_of_its_own_are_contained(make_daemon):
    """A client that completed the cookie round trip from an address of its own reaches
    everything behind the gate: field by field, every integer of its DATA (header, body,
    frame, and the head of the encoded message, CRCs recomputed) at each extreme value,
    each on a new stream of its own with an otherwise whole, valid message; and streams
    that stand at an extreme position (base = seq = each value). Meanwhile A sends real
    traffic to B. B must not crash; it may store the attacker's own valid messages (its
    own streams, like any client's), each at most once and as sent, and nothing else; the
    real messages arrive exactly once, in order."""
    rng = random.Random(505)
    a, b = make_daemon("a").start(), make_daemon("b").start()
    marks = {a: LogMark(a), b: LogMark(b)}
    c = learn(b, rng, "127.0.0.9")
    sent = []

    def send_own(d):
        sent.append(d)
        c.send(d)

    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "ab", 300)
    t0 = time.monotonic()
    for rep in range(6):
        if rep == 3:
            dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "ab", 300, start=301)
        template = c.data(rng.randrange(1, MAX_ID), 1, [wire.frame(1, text_message(
            f"own-{rep:06d}", token="own"))])
        for name, value, d in extremes(template, HEADER_FIELDS + DATA_FIELDS + MESSAGE_FIELDS):
            if name not in ("stream", "run", "node"):  # a new stream for every datagram
                d = bytearray(d)
                struct.pack_into("!Q", d, _H, rng.randrange(1, MAX_ID))
                d = wire.reseal(bytes(d))
            if name in ("kind", "has_token", "ts_len", "token_len"):  # the message's CRC
                d = bytearray(d)
                struct.pack_into("!I", d, _H + 60, zlib.crc32(bytes(d[_M:-4])))
                d = wire.reseal(bytes(d))
            send_own(d)
            pace(len(sent), t0)
        for value in U64:  # streams at an extreme position
            if 0 < value <= MAX_ID:
                i = len(sent)
                send_own(c.data(rng.randrange(1, MAX_ID), value, [
                    wire.frame(value, text_message(f"top-{i:06d}", token="own"))]))
                send_own(c.data(rng.randrange(1, MAX_ID), value, [
                    wire.frame(value, text_message(f"top-{i + 1:06d}", token="own")),
                    wire.frame(min(value + 1, MAX_ID), text_message(f"top-{i + 2:06d}",
                                                                    token="own"))]))
        c.receive()
    print(f"\n{len(sent)} datagrams from a validated client in {time.monotonic() - t0:.1f} s")
    c.sync()
    assert_series_delivered(a, b, "ab", 600, timeout=30)
    own = b.query("SELECT data FROM mqin WHERE shost='127.0.0.9'")
    frames = sum(len(wire.data_fields(d)[5]) for d in sent if wire.problem(d) is None)
    assert len(own) <= frames, f"{len(own)} rows from the client's {frames} valid frames"
    everything = b"".join(sent)
    for (data,) in own:
        raw = data.encode() if isinstance(data, str) else data or b""
        assert raw in everything, f"a row the client never sent: {data!r}"
    assert b.count("mqin") == 600 + len(own), "rows from elsewhere"
    assert_no_crash(marks)


# -- 4. fragments of different messages and versions for one sequence number ------------------

def frames_of(datagrams, seq):
    """{(nfrags, total, crc): {frag: chunk}} of message `seq` in captured DATA."""
    out = collections.defaultdict(dict)
    for d in datagrams:
        if wire.problem(d) is None and wire.fields(d)["type"] == wire.DATA:
            for s, frag, nfrags, total, mcrc, chunk in wire.data_fields(d)[5]:
                if s == seq:
                    out[(nfrags, total, mcrc)][frag] = chunk
    return out


@pytest.mark.timeout(120)
def test_fragments_of_other_versions_and_forged_counts_never_mix(make_daemon, make_relay):
    """Two large messages (7 and 8 of a series) are in flight in two real versions each:
    A sent version 1 (captured, dropped), the rows were updated, A restarted and sent
    version 2 (captured, dropped). From the address B knows A at (what A sends is
    captured and altered, CRC fixed: more than an off-path attacker can do) and from
    strangers, B gets the fragments of both versions interleaved (and under 7's number,
    fragments of 7 and 8 in turn), fragments with conflicting counts, totals and CRCs,
    altered chunks, and, for message 7 only, every fragment of version 1 in a row. Once
    the link is back, 1..9 arrive exactly once, in order; 7 is version 1 or version 2,
    whole; 8 is version 2 (version 1 never arrived whole); nothing else is stored."""
    rng = random.Random(606)
    a, b = make_daemon("a").start(), make_daemon("b").start()
    marks = {a: LogMark(a), b: LogMark(b)}
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    wire.exchange(a, b, relay, "s", [f"s-{i:06d}" for i in range(1, 6)])
    relay.set_faults("forward", loss=100)
    relay.reset_stats()

    def version(i, v):  # 5 fragments, then 6: all within A's first window of 16 packets
        return f"s-{i:06d}:v{v}:" + "".join(rng.choice("abcdefgh") for _ in range(
            3900 + 1100 * v + 10 * i))

    v1 = {7: version(7, 1), 8: version(8, 1)}
    v2 = {7: version(7, 2), 8: version(8, 2)}
    xs7 = dbmod.enqueue_many(a.db, [("127.0.0.1", relay.port, "s", "s-000006"),
                                    ("127.0.0.1", relay.port, "s", v1[7]),
                                    ("127.0.0.1", relay.port, "s", v1[8]),
                                    ("127.0.0.1", relay.port, "s", "s-000009")])
    seq_of = dict(a.query("SELECT x, seq FROM mqout WHERE token='s'"))
    first, seq7, seq8 = seq_of[xs7[0]], seq_of[xs7[1]], seq_of[xs7[2]]

    def complete(seq):
        got = frames_of(relay.captured("forward"), seq)
        return any(len(chunks) == n for (n, _t, _c), chunks in got.items())

    wait_until(lambda: complete(seq7) and complete(seq8), 15,
               "A sent every fragment of version 1 (captured, dropped)")
    captured_v1 = relay.captured("forward")
    for x, i in ((xs7[1], 7), (xs7[2], 8)):
        dbmod.sqlite_cli(a.db, f"UPDATE mqout SET data = {dbmod.text_expr(v2[i])} WHERE x = {x};")
    a.restart()  # reads the rows again: version 2, same stream and sequence numbers
    relay.reset_stats()
    wait_until(lambda: complete(seq7) and complete(seq8), 15,
               "A sent every fragment of version 2 (captured, dropped)")
    captured_v2 = relay.captured("forward")
    # A's new run does not know B's run nor its cookie yet (B never heard it): take them
    # from version 1's datagrams, as an on-path attacker would
    template = next(d for d in captured_v1 if wire.problem(d) is None
                    and wire.fields(d)["type"] == wire.DATA)
    f = wire.fields(template)
    stream, _pn, dst, cookie, _base, _frames = wire.data_fields(template)
    counter = [1 << 40]

    def datagram(seq, frag, nfrags, total, mcrc, chunk):
        counter[0] += 1
        return wire.seal(wire.header(wire.DATA, f["port"], f["node"], f["run"], f["peer_run"],
                                     counter[0])
                         + wire.data_body(stream, counter[0], first,
                                          [(seq, frag, nfrags, total, mcrc, chunk)], dst, cookie))

    versions = {}
    for seq in (seq7, seq8):
        (k1, c1), = frames_of(captured_v1, seq).items()
        (k2, c2), = frames_of(captured_v2, seq).items()
        assert k1 != k2 and len(c1) == k1[0] and len(c2) == k2[0], "two whole real versions"
        versions[seq] = ((k1, c1), (k2, c2))
    attack = []
    for seq in (seq7, seq8):
        ((n1, t1, r1), c1), ((n2, t2, r2), c2) = versions[seq]
        for i in range(max(n1, n2)):  # the two versions interleaved, fragment by fragment
            (n, t, r, c) = (n1, t1, r1, c1) if i % 2 == 0 else (n2, t2, r2, c2)
            if i < n:
                attack.append(datagram(seq, i, n, t, r, c[i]))
        for i in range(n1):  # conflicting counts, totals and CRCs on real chunks
            count = rng.choice((n1 - 1, n1 + 1, n2, 1 << 24)) if i < n1 - 1 else n1 + 1
            attack.append(datagram(seq, i, count, t1, r1, c1[i]))
            attack.append(datagram(seq, i, n1, rng.choice((t1 + 1, t1 - 1, t2)), r1, c1[i]))
            attack.append(datagram(seq, i, n1, t1, rng.choice((r2, r1 ^ 1, 0)), c1[i]))
        for i in range(n2):  # version 2 with one chunk altered, its head kept
            chunk = c2[i] if i != n2 // 2 else bytes(reversed(c2[i]))
            attack.append(datagram(seq, i, n2, t2, r2, chunk))
        for i in range(n1):  # version 1's chunks under version 2's head
            if i < n2:
                attack.append(datagram(seq, i, n2, t2, r2, c1[i]))
    # under 7's number, fragments of 7 and of 8 (both versions) in turn, one each
    mixed = [versions[seq7][0], versions[seq8][0], versions[seq7][1], versions[seq8][1]]
    for i in range(8):
        (n, t, r), c = mixed[i % 4]
        if i < n:
            attack.append(datagram(seq7, i, n, t, r, c[i]))
    ((n1, t1, r1), c1), _ = versions[seq7]
    finish = [datagram(seq7, i, n1, t1, r1, c1[i]) for i in range(n1)]  # version 1, whole
    strangers = [stranger("127.0.0.1"), stranger("127.0.0.11")]
    in_b = b.count("mqin")
    t0 = time.monotonic()
    for n, d in enumerate(attack * 2 + finish):
        relay.send_upstream(d, ("127.0.0.1", a.port))
        send(rng.choice(strangers), d, ("127.0.0.1", b.port))
        pace(n, t0, RATE / 2)
    probe = learn(b, rng, "127.0.0.12")
    probe.sync()
    holds_for(lambda: b.count("mqin") == in_b, 1.0, "nothing stored out of order")
    assert_no_crash(marks)
    relay.set_faults("forward", loss=0)
    assert_series_delivered(a, b, "s", 9, timeout=40)
    got = dict(b.query("SELECT seq, data FROM mqin WHERE token='s'"))
    assert got[seq7] in (v1[7], v2[7]), f"message 7 is no real version: {got[seq7][:40]!r}..."
    assert got[seq8] == v2[8], f"message 8 is not version 2: {got[seq8][:40]!r}..."
    print(f"\nmessage 7 arrived as version {1 if got[seq7] == v1[7] else 2}")
    assert b.count("mqin") == 9
    assert_no_crash(marks)


# -- 5. memory ---------------------------------------------------------------------------------

RSS_LIMIT = 100 << 20  # the receiving daemon's resident memory while forgeries arrive
MB = 1 << 20


class Meter:
    """The receiving daemon's resident memory, looked at every `every` datagrams."""

    def __init__(self, d, every=2000):
        self.d, self.every = d, every
        self.start = self.peak = rss_bytes(d.pid)

    def look(self, n=None):
        if n is None or n % self.every == 0:
            rss = rss_bytes(self.d.pid)
            self.peak = max(self.peak, rss)
            if rss > 4 * RSS_LIMIT:  # protect the shared machine
                self.d.kill()
                pytest.fail(f"{self.d.name} grew to {rss >> 20} MiB (stopped)")
            return rss
        return None

    def now(self):
        return self.look()


def flood(make, total_bytes, send_one, meter, sync=None, rate=RATE):
    """send_one(make()) until total_bytes went out; sync() every 5,000 datagrams (the
    daemon has read what came: its memory is looked at for what arrived, not for what
    waits in the kernel). Returns (datagrams, bytes) sent."""
    n = sent = 0
    t0 = time.monotonic()
    while sent < total_bytes:
        d = make()
        send_one(d)
        sent += len(d)
        n += 1
        meter.look(n)
        pace(n, t0, rate)
        if sync is not None and n % 5000 == 0:
            sync()
    if sync is not None:
        sync()
    meter.look()
    return n, sent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_memory_stays_bounded_under_20mb_of_forgeries_from_unvalidated_sources(make_daemon):
    """20 MB of DATA that echoes B's run (any prober learns it) but not the cookie of the
    address it comes from: fragments of 16 MiB messages in up to 2^24 fragments on many
    streams, tiny one-byte fragments each on a new stream, empty fragments; from strangers
    on many loopback addresses and, spoofed, from thousands more; while A sends real
    traffic. B's resident memory stays under 100 MB, B stores and keeps nothing of it, and
    A's messages arrive exactly once, in order."""
    rng = random.Random(707)
    a, b = make_daemon("a").start(), make_daemon("b").start()
    marks = {a: LogMark(a), b: LogMark(b)}
    probe = learn(b, rng, "127.0.0.14")
    b_node, b_run = probe.peer_node, probe.peer_run
    meter = Meter(b)
    socks = [stranger(f"127.0.0.{i}") for i in range(20, 28)]

    def make():
        pick = rng.random()
        stream = rng.randrange(1, MAX_ID)
        if pick < 0.12:  # a fragment of a 16 MiB message (by bytes: about 60%)
            nfrags = rng.choice((1 << 24, 15252, rng.randrange(2, 1 << 24)))
            frames = [(rng.randrange(1, 100), rng.randrange(nfrags), nfrags, 16 << 20,
                       rng.getrandbits(32), rng.randbytes(1100))]
        elif pick < 0.78:  # a tiny fragment, a stream of its own
            frames = [(1, 0, 2, 100, rng.getrandbits(32), b"x")]
        else:  # an empty fragment (malformed)
            frames = [(1, 0, 2, 100, 0, b"")]
        cookie = rng.choice((0, rng.randrange(1, MAX_ID), probe.cookie))
        return wire.seal(wire.header(wire.DATA, rng.randrange(1, 65536), rng.randrange(1, MAX_ID),
                                     rng.randrange(1, MAX_ID), b_run, rng.randrange(1, 1 << 40))
                         + wire.data_body(stream, rng.randrange(1, 1 << 20), 1, frames,
                                          rng.choice((0, b_node)), cookie))

    def send_one(d):
        if SPOOF and rng.random() < 0.3:
            send_spoofed(d, (f"127.{rng.randrange(1, 255)}.{rng.randrange(256)}."
                             f"{rng.randrange(1, 255)}", rng.randrange(1024, 65536)),
                         ("127.0.0.1", b.port))
        else:
            send(rng.choice(socks), d, ("127.0.0.1", b.port))

    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "real", 500)
    t0 = time.monotonic()
    n, sent = flood(make, 20 * MB, send_one, meter, sync=probe.sync)
    took = time.monotonic() - t0
    print(f"\n{n} datagrams, {sent / MB:.1f} MB in {took:.1f} s; B's RSS {meter.start / MB:.1f} "
          f"-> peak {meter.peak / MB:.1f} -> {meter.now() / MB:.1f} MB")
    assert meter.peak < RSS_LIMIT, f"B's RSS reached {meter.peak / MB:.1f} MB"
    assert_series_delivered(a, b, "real", 500, timeout=30)
    assert b.count("mqin") == 500, "B stored forgeries"
    assert_no_crash(marks)


def validated_attacker_config():
    """B's max_message small, so that one address's share of memory (its largest message
    in the smallest fragments, and 1 MiB: PROTOCOL.md "Bounded resources") is about
    2.5 MiB and filled quickly: what one attacker may make B hold is that much."""
    return {"max_message": 1 << 20}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_memory_a_validated_attacker_can_take_stays_within_its_share(make_daemon):
    """An attacker that completed the cookie round trip from an address of its own sends
    20 MB of DATA B takes: fragments of messages up to the largest B accepts, in large
    and in one-byte fragments, for the next message of a stream and for later ones, on
    300 streams (B holds at most 256 per address), with packet numbers full of gaps; and
    empty fragments. Once its share is full (after 5 MB), 15 MB more make B
    hold no more; B's RSS stays under 100 MB; A's real messages arrive exactly once, in
    order, and nothing of the attacker is stored (it never completes a message)."""
    rng = random.Random(808)
    a = make_daemon("a").start()
    b = make_daemon("b", **validated_attacker_config()).start()
    marks = {a: LogMark(a), b: LogMark(b)}
    c = learn(b, rng, "127.0.0.13")
    syncer = learn(b, rng, "127.0.0.15")
    meter = Meter(b)
    limit = (1 << 20) + 2 * 65535 + 8  # the largest encoded message B accepts
    # 300 streams with 8 messages in flight each: half in 1,000-byte fragments, half in
    # one-byte fragments, each message one version (its count, length and CRC) throughout,
    # so that what arrives of it adds up
    messages = []
    for stream in (rng.randrange(1, MAX_ID) for _ in range(300)):
        for seq in range(1, 9):
            total = rng.choice((limit, limit - 1, rng.randrange(20000, limit)))
            piece = 1000 if seq % 2 else 1
            messages.append((stream, seq, -(-total // piece), total, rng.getrandbits(32), piece))

    def make():
        stream, seq, nfrags, total, mcrc, piece = rng.choice(messages)
        frag = rng.randrange(nfrags - 1)  # never the last one: no message completes
        if rng.random() < 0.1:  # an empty fragment (malformed)
            frames = [(seq, frag, nfrags, total, mcrc, b"")]
        else:
            frames = [(seq, frag, nfrags, total, mcrc, rng.randbytes(piece))]
        return c.data(stream, 1, frames, pn=rng.randrange(1, 1 << 30))

    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "real", 300)
    n1, sent1 = flood(make, 5 * MB, c.send, meter, sync=syncer.sync)
    c.receive()
    filled = meter.now()
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "real", 300, start=301)
    n2, sent2 = flood(make, 15 * MB, c.send, meter, sync=syncer.sync)
    c.receive()
    end = meter.now()
    print(f"\n{n1} + {n2} datagrams, {(sent1 + sent2) / MB:.1f} MB; B's RSS "
          f"{meter.start / MB:.1f} -> {filled / MB:.1f} after 5 MB -> {end / MB:.1f} after 20 MB "
          f"(peak {meter.peak / MB:.1f})")
    assert meter.peak < RSS_LIMIT, f"B's RSS reached {meter.peak / MB:.1f} MB"
    assert end - filled < 4 * MB, (f"B held {(end - filled) / MB:.1f} MB more for an attacker "
                                   f"whose share was already full")
    assert_series_delivered(a, b, "real", 600, timeout=30)
    assert b.count("mqin") == 600, "B stored the attacker's fragments as messages"
    assert_no_crash(marks)


@pytest.mark.timeout(60)
def test_memory_whole_messages_held_for_an_earlier_one_are_charged_all_they_hold(make_daemon):
    """A validated attacker sends whole messages 2..1500 of a stream and never message 1,
    each with a 64 KiB token and a 64 KiB ts and no data (about 200 MB in all): B holds
    them waiting for message 1, charged for their token and ts too, so its resident
    memory stays under 100 MB; A's real messages arrive exactly once, in order."""
    rng = random.Random(909)
    a, b = make_daemon("a").start(), make_daemon("b").start()
    marks = {a: LogMark(a), b: LogMark(b)}
    c = learn(b, rng, "127.0.0.16")
    meter = Meter(b, every=50)
    stream, token = rng.randrange(1, MAX_ID), b"T" * 65535
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "real", 300)
    for seq in range(2, 1502):
        blob = wire.message(0, token, (b"%020d" % seq) * 3276 + b"t" * 15, None)
        chunks = [blob[i:i + 44000] for i in range(0, len(blob), 44000)]
        for i, chunk in enumerate(chunks):
            c.send(c.data(stream, 1, [wire.frame(seq, blob, frag=i, nfrags=len(chunks),
                                                 chunk=chunk)]))
        if seq % 50 == 0:
            c.sync()  # B has read what came: its memory is looked at for what arrived
            meter.look(seq)
    c.sync()
    print(f"\nB's RSS {meter.start / MB:.1f} -> peak {meter.peak / MB:.1f} -> "
          f"{meter.now() / MB:.1f} MB")
    assert meter.peak < RSS_LIMIT, f"B's RSS reached {meter.peak / MB:.1f} MB"
    assert_series_delivered(a, b, "real", 300, timeout=30)
    assert b.count("mqin") == 300, "B stored the attacker's messages without message 1"
    assert_no_crash(marks)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_memory_streams_a_validated_attacker_opens_and_abandons_are_forgotten(make_daemon):
    """An attacker that completed the cookie round trip opens stream after stream: each
    DATA names a new stream, skips to a random base and carries one whole message whose
    CRC is wrong (so nothing is stored and the stream is idle at once). B holds at most
    256 streams for the address and forgets idle ones (their committed point is kept
    in tinymq_rx, PROTOCOL.md "Bounded resources"): once that many were opened, 40,000
    more must cost no memory."""
    rng = random.Random(909)
    b = make_daemon("b").start()
    marks = {b: LogMark(b)}
    c = learn(b, rng, "127.0.0.16")
    syncer = learn(b, rng, "127.0.0.17")
    meter = Meter(b)
    bad = text_message("abandoned")

    def make():
        base = rng.randrange(1, 1 << 40)
        return c.data(rng.randrange(1, MAX_ID), base, [wire.frame(base, bad, message_crc=1)])

    n1, _ = flood(make, 20000 * len(make()), c.send, meter, sync=syncer.sync)
    c.receive()
    warm = meter.now()
    n2, sent = flood(make, 40000 * len(make()), c.send, meter, sync=syncer.sync)
    c.receive()
    end = meter.now()
    print(f"\n{n1} + {n2} new streams ({sent / MB:.1f} MB); B's RSS {meter.start / MB:.1f} -> "
          f"{warm / MB:.1f} -> {end / MB:.1f} MB ({(end - warm) / n2:.0f} bytes per stream)")
    assert end - warm < 3 * MB, (f"{n2} abandoned streams made B grow by "
                                 f"{(end - warm) / MB:.1f} MB: they are not forgotten")
    assert b.count("mqin") == 0
    assert_no_crash(marks)


# -- 6. amplification --------------------------------------------------------------------------

def key_config(tmp_path, name, **keys):
    """key_file (0640, as README says) and peers {"*": first key} for a daemon."""
    directory = tmp_path / f"keys-{name}"
    directory.mkdir(exist_ok=True)
    path = directory / "keys.yaml"
    path.write_text("".join(f"{k}: {base64.b64encode(v).decode()}\n" for k, v in keys.items()))
    path.chmod(0o640)
    return {"key_file": str(path), "peers": {"*": next(iter(keys))}}


def answerable(d):
    """DATA a daemon may answer with a HELLO: intact and well formed up to its messages
    (whose content is only looked at once the cookie was echoed), or sealed."""
    if wire.is_sealed(d):
        return len(d) >= wire.HEADER.size and wire.fields(d)["type"] == wire.DATA
    why = wire.problem(d)
    return (why is None or why.startswith("malformed message")) and \
        wire.fields(d)["type"] == wire.DATA


class Source:
    """An address an attacker sends from (its own socket, or forged with a raw socket
    while this socket only listens: the victim of a reflection) and what comes back."""

    def __init__(self, host, spoofed=False):
        self.sock = stranger(host)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.spoofed = spoofed
        self.sent = self.datagrams = self.smallest_data = self.answerable = 0
        self.back = []

    def send(self, d, target):
        try:
            if self.spoofed:
                send_spoofed(d, self.address, target)
            else:
                self.sock.sendto(d, target)
        except OSError:
            return
        self.sent += len(d)
        self.datagrams += 1
        if answerable(d):
            self.answerable += 1
            self.smallest_data = min(self.smallest_data or len(d), len(d))

    def collect(self):
        while True:
            try:
                self.back.append(self.sock.recv(65535))
            except (BlockingIOError, InterruptedError):
                return self.back


@pytest.mark.timeout(90)
@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_no_amplification_towards_addresses_that_never_echoed_a_cookie(
        make_daemon, make_relay, tmp_path, keyed):
    """From addresses that never echo their cookie (attackers' own sockets, and, forged,
    the address of a victim that only listens): DATA of every size from 119 bytes (the
    smallest valid one) to 65,507, on new and on repeated streams, echoing B's run or
    not, naming B or not; HELLOs; ACKs that echo B's run; garbage and wire.Hostile's
    datagrams; sealed ones under a wrong key for the keyed daemon. For every address,
    the bytes B sends back are at most the bytes it was sent (PROTOCOL.md: at most one
    HELLO, shorter than the DATA it answers), and only HELLOs. A's real traffic to B
    flows meanwhile."""
    rng = random.Random(1001 + keyed)
    secret = os.urandom(32)
    conf = (lambda n: key_config(tmp_path, n, k=secret)) if keyed else (lambda n: {})
    a, b = make_daemon("a", **conf("a")).start(), make_daemon("b", **conf("b")).start()
    marks = {a: LogMark(a), b: LogMark(b)}
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    forward, reverse = wire.exchange(a, b, relay, "warm", [f"warm-{i:06d}" for i in range(1, 11)]
                                     + ["w" * 3000])
    corpus = [wire.aead_open(d, secret) if keyed else d for d in forward + reverse]
    hostile = wire.Hostile(rng, corpus)
    probe = learn(b, rng, "127.0.0.40") if not keyed else \
        wire.Client("127.0.0.40", rng, psk=secret).handshake(("127.0.0.1", b.port))
    b_node, b_run = probe.peer_node, probe.peer_run
    wrong = os.urandom(32)
    sources = {name: Source(host, spoofed) for name, host, spoofed in (
        ("data", "127.0.0.41", False), ("data_repeated_stream", "127.0.0.42", False),
        ("hello_ack", "127.0.0.43", False), ("garbage", "127.0.0.44", False),
        ("everything", "127.0.0.45", False))}
    if SPOOF:
        sources["victim_of_forged_everything"] = Source("127.0.0.46", spoofed=True)
    target = ("127.0.0.1", b.port)
    sizes = [119, 120, 121, 128, 150, 200, 300, 500, 800, 1200, 1500, 4000, 9000, 30000, 65507]
    one_stream = rng.randrange(1, MAX_ID)

    def data(size, stream=None):
        """A well-formed DATA of exactly `size` bytes (its one fragment fills it)."""
        chunk = rng.randbytes(size - 118)
        frames = [(1, 0, 2, len(chunk) + 8, rng.getrandbits(32), chunk)]
        d = wire.seal(wire.header(wire.DATA, rng.randrange(1, 65536), rng.randrange(1, MAX_ID),
                                  rng.randrange(1, MAX_ID), rng.choice((0, b_run)),
                                  rng.randrange(1, 1 << 40))
                      + wire.data_body(stream or rng.randrange(1, MAX_ID), rng.randrange(1, 99),
                                       1, frames, rng.choice((0, b_node, 12345)),
                                       rng.choice((0, probe.cookie, rng.randrange(1, MAX_ID)))))
        assert len(d) == size
        if keyed and rng.random() < 0.7:  # sealed under a key B does not have
            d = wire.aead_seal(d, wrong)
        return d

    def hello_or_ack():
        if rng.random() < 0.5:
            d = wire.seal(wire.header(wire.HELLO, 9, rng.randrange(1, MAX_ID),
                                      rng.randrange(1, MAX_ID), rng.choice((0, b_run)), 1)
                          + wire.hello_body(rng.randrange(1, MAX_ID), rng.randrange(MAX_ID)))
        else:
            d = wire.seal(wire.header(wire.ACK, 9, rng.randrange(1, MAX_ID),
                                      rng.randrange(1, MAX_ID), b_run, 1)
                          + wire.ack_body(rng.randrange(1, MAX_ID), rng.randrange(MAX_ID),
                                          [(1, rng.randrange(1, 50))]))
        return wire.aead_seal(d, wrong) if keyed and rng.random() < 0.5 else d

    makers = {
        "data": lambda: data(rng.choice(sizes) if rng.random() < 0.5 else rng.randrange(119, 1500)),
        "data_repeated_stream": lambda: data(rng.choice(sizes[:10]), one_stream),
        "hello_ack": hello_or_ack,
        "garbage": lambda: hostile.make()[1] if rng.random() < 0.7 else rng.randbytes(
            rng.randrange(0, 1500)),
    }
    makers["everything"] = lambda: makers[rng.choice(list(makers))]()
    makers["victim_of_forged_everything"] = makers["everything"]
    dbmod.enqueue_series(a.db, "127.0.0.1", relay.port, "real", 300)
    t0 = time.monotonic()
    for n in range(6000):
        name = rng.choice(list(sources))
        sources[name].send(makers[name](), target)
        pace(n, t0, 4000)
    probe.sync()
    # whatever B answers comes at once; look a little longer for anything late
    holds_for(lambda: all(s.collect() is not None for s in sources.values()), 1.0,
              "collecting what B sends back")
    report = []
    for name, s in sources.items():
        back = sum(map(len, s.back))
        report.append(f"{name}: sent {s.datagrams} ({s.sent} B), got back {len(s.back)} "
                      f"({back} B, ratio {back / max(1, s.sent):.3f})")
    print("\n" + "\n".join(report))
    for name, s in sources.items():
        back = sum(map(len, s.back))
        assert back <= s.sent, f"amplification towards {name}: {report}"
        kinds = collections.Counter(wire.fields(d)["type"] for d in s.back)
        assert set(kinds) <= {wire.HELLO}, f"{name} got {dict(kinds)} back (only HELLOs)"
        if s.back:
            assert len(s.back) <= s.answerable and max(map(len, s.back)) < s.smallest_data, \
                f"{name}: more HELLOs than DATA, or one not shorter than the DATA it answers"
        if keyed:
            assert not s.back, f"keyed B answered {name}'s unauthenticated datagrams"
    assert_series_delivered(a, b, "real", 300, timeout=30)
    assert b.count("mqin") == 311
    assert_no_crash(marks)


# -- 7. keyed mode: replays, unsealed and wrongly keyed datagrams -------------------------------

def keyed_pair(make_daemon, tmp_path, secret):
    a = make_daemon("a", **key_config(tmp_path, "a", k=secret)).start()
    b = make_daemon("b", **key_config(tmp_path, "b", k=secret)).start()
    return a, b


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_keyed_replays_after_restarts_change_nothing(make_daemon, make_relay, tmp_path):
    """A and B share a key; every datagram both ways goes through a capturing relay. In
    four phases (as started; after A restarted; after B restarted; after both were
    killed and started) real messages flow both ways, then both links drop everything
    while new rows wait, and every datagram captured so far is replayed to each daemon
    from the address it came from at first (the relay's ports), and from a stranger,
    together with an unsealed and a wrongly keyed copy of it and of the datagrams of the
    rows now waiting. Nothing is created or deleted; once the links work, every message
    arrives exactly once, in order, authenticated by the key."""
    rng = random.Random(1101)
    secret, wrong = os.urandom(32), os.urandom(32)
    a, b = keyed_pair(make_daemon, tmp_path, secret)
    to_b = make_relay(("127.0.0.1", b.port), capture=True)
    to_a = make_relay(("127.0.0.1", a.port), capture=True)
    totals = {"ab": 0, "ba": 0}
    sender = {"ab": (a, b, to_b), "ba": (b, a, to_a)}
    strangers = [stranger("127.0.0.50"), stranger("127.0.0.51")]
    a_addr, b_addr = ("127.0.0.1", a.port), ("127.0.0.1", b.port)

    def enqueue(tag, count):  # some 600 bytes each: dozens of datagrams, some fragmented
        src, _dst, relay = sender[tag]
        dbmod.enqueue_series(src.db, "127.0.0.1", relay.port, tag, count, start=totals[tag] + 1,
                             pad=rng.choice((300, 600, 1500)))
        totals[tag] += count

    def delivered():
        for tag, (src, dst, _relay) in sender.items():
            assert_series_delivered(src, dst, tag, totals[tag], timeout=30)

    def replay(d):
        """d to A and to B from the addresses they know each other's datagrams from,
        and from a stranger."""
        to_b.send_from_listening_port(d, a_addr)   # where B's answers come from, to A
        to_a.send_upstream(d, b_addr)              # where B's DATA comes from, to A
        to_a.send_from_listening_port(d, b_addr)   # where A's answers come from, to B
        to_b.send_upstream(d, a_addr)              # where A's DATA comes from, to B
        for target in (a_addr, b_addr):
            send(rng.choice(strangers), d, target)

    marks = {a: LogMark(a), b: LogMark(b)}
    replayed = collections.Counter()
    for phase, victims, how in (("as started", (), None), ("A restarted", (a,), "term"),
                                ("B restarted", (b,), "term"), ("both killed", (a, b), "kill")):
        for d in victims:
            d.kill() if how == "kill" else d.stop()
        for d in victims:
            d.start()
        enqueue("ab", 40)
        enqueue("ba", 20)
        delivered()
        old = to_b.captured() + to_a.captured()  # all so far: delivered, or old runs'
        for relay in (to_b, to_a):
            relay.set_faults("forward", loss=100)
        dropped = {r: r.snapshot()["forward"]["dropped"] for r in (to_b, to_a)}
        enqueue("ab", 10)
        enqueue("ba", 5)
        wait_until(lambda: all(r.snapshot()["forward"]["dropped"] > dropped[r]
                               for r in (to_b, to_a)), 10, "the waiting rows were sent (dropped)")
        waiting = [d for d in to_b.captured("forward") + to_a.captured("forward") if d not in old]
        rows = {d: (d.count("mqin"), xs(d, "mqout")) for d in (a, b)}
        t0 = time.monotonic()
        n = 0
        for d in old + waiting:
            plain = wire.aead_open(d, secret)
            assert plain is not None, "a captured datagram the key does not open"
            copies = [("unsealed", plain), ("wrong key", wire.aead_seal(plain, wrong))]
            if d in old:  # a replay proper (the waiting rows' own datagrams are not one)
                copies.append(("replayed", d))
            for kind, copy in copies:
                replay(copy)
                replayed[kind] += 1
                n += 1
                pace(n, t0, RATE / 6)  # each goes out 6 times
        for d in (a, b):  # a keyed client of its own: the daemon has read all of them
            wire.Client("127.0.0.52", rng, psk=secret).handshake(("127.0.0.1", d.port))
        holds_for(lambda: {d: (d.count("mqin"), xs(d, "mqout")) for d in (a, b)} == rows, 1.5,
                  f"{phase}: the replays created and deleted nothing",
                  describe=lambda: f"before {[(r[0], len(r[1])) for r in rows.values()]}, now "
                                   f"{[(d.count('mqin'), d.count('mqout')) for d in (a, b)]}")
        for tag, (src, dst, _relay) in sender.items():
            assert_handoff(src, dst, tag, totals[tag])
        assert_no_crash(marks)
        for relay in (to_b, to_a):
            relay.set_faults("forward", loss=0)
        delivered()
        print(f"\n{phase}: replayed {len(old)} captured datagrams and copies of "
              f"{len(waiting)} waiting ones, 6 times each ({dict(replayed)})")
    assert set(a.query("SELECT DISTINCT key FROM mqin")) == {("k",)}
    assert set(b.query("SELECT DISTINCT key FROM mqin")) == {("k",)}
    assert a.count("mqin") == totals["ba"] and b.count("mqin") == totals["ab"]
    assert_no_crash(marks)


@pytest.mark.timeout(60)
def test_keyed_daemons_drop_unsealed_and_wrongly_keyed_forgeries_a_key_holder_could_make(
        make_daemon, make_relay, tmp_path):
    """With all that an on-path attacker sees and more (the test reads the stream id and
    sequence number from A's database and opens sealed datagrams with the key), forged
    datagrams that would work if sealed with the key: an ACK that commits A's waiting
    row, and DATA (B's cookie and run taken from its sealed HELLO) with another content
    for that row. Unsealed or sealed with another key, they change nothing; sealed with
    the key (the control: a key holder can) the ACK deletes the row and the DATA is
    stored."""
    rng = random.Random(1202)
    secret, wrong = os.urandom(32), os.urandom(32)
    a, b = keyed_pair(make_daemon, tmp_path, secret)
    marks = {a: LogMark(a), b: LogMark(b)}
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    wire.exchange(a, b, relay, "warm", ["warm-000001"])
    relay.set_faults("forward", loss=100)
    relay.reset_stats()
    x = a.enqueue(relay.port, "t", "the real one")
    wait_until(lambda: relay.captured("forward"), 10, "A sent it (captured, dropped)")
    sealed = relay.captured("forward")[0]
    plain = wire.aead_open(sealed, secret)
    f = wire.fields(plain)
    stream, pn, dst, cookie, base, frames = wire.data_fields(plain)
    (seq, *_rest), = frames
    assert (stream, seq) == a.query("SELECT stream, seq FROM mqout WHERE x=?", (x,))[0]
    forged_msg = text_message("FORGED", token="t")
    data = wire.seal(wire.header(wire.DATA, f["port"], f["node"], f["run"], f["peer_run"],
                                 f["counter"] + 1000)
                     + wire.data_body(stream, pn + 1000, base, [wire.frame(seq, forged_msg)],
                                      dst, cookie))
    ack = wire.seal(wire.header(wire.ACK, b.port, node_id(b), rng.randrange(1, MAX_ID),
                                f["run"], 77)
                    + wire.ack_body(stream, seq + 1, [(1, pn)], tag=wire.data_tag(plain)))
    client = ("127.0.0.1", a.port)
    for attempt in ("unsealed", "wrong key"):
        for d in (data, ack):
            d = d if attempt == "unsealed" else wire.aead_seal(d, wrong)
            for _ in range(3):
                relay.send_upstream(d, client)                      # to B, from A's path
                relay.send_from_listening_port(d, ("127.0.0.1", a.port))  # to A, B's path
        holds_for(lambda: a.count("mqout", "x=?", (x,)) == 1 and b.count("mqin", "token='t'") == 0,
                  1.0, f"{attempt} forgeries change nothing")
    assert_no_crash(marks)
    relay.send_from_listening_port(wire.aead_seal(ack, secret), ("127.0.0.1", a.port))
    wait_until(lambda: a.count("mqout", "x=?", (x,)) == 0, 5,
               "control: the same ACK sealed with the key deletes the row")
    relay.send_upstream(wire.aead_seal(data, secret), client)
    wait_until(lambda: b.query("SELECT data, key FROM mqin WHERE token='t'") == [("FORGED", "k")],
               5, "control: the same DATA sealed with the key is stored")
    assert_no_crash(marks)
