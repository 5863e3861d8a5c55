"""The wire format as docs/PROTOCOL.md describes it, written independently of
tinymqd/protocol.py: build datagrams, take captured ones apart, tell whether one is
valid by the document's rules, and derive hostile variants of real datagrams.

    raw = seal(header(DATA, port, node, run, peer_run, counter) + data_body(...))
    problem(raw)  -> None for a valid datagram, else why PROTOCOL.md says to drop it
    Hostile(rng, corpus).make() -> (kind, datagram) that PROTOCOL.md says to drop
    exchange(a, b, relay, tag, datas) -> real datagrams both ways, captured by a relay
"""

import math
import struct
import zlib

from tests.support import db as dbmod
from tests.support.wait import wait_until

MAGIC = b"TMQ"
VERSION = 2
DATA, ACK, HELLO = 1, 2, 3
TYPES = (DATA, ACK, HELLO)

# magic, version, type, flags, port, node, run, peer_run, counter
HEADER = struct.Struct("!3sBBBHQQQQ")
CRC = struct.Struct("!I")
DATA_HEAD = struct.Struct("!QQQQQQ")  # stream, pn, dst, cookie, base, tag
FRAME = struct.Struct("!QIIIIH")      # seq, frag, nfrags, total, crc, len
ACK_HEAD = struct.Struct("!QQQQQH")   # stream, committed, refused, limit, tag, count
RANGE = struct.Struct("!QQ")
HELLO_BODY = struct.Struct("!QQQ")    # stream, cookie, tag
MESSAGE_HEAD = struct.Struct("!BBHI")  # kind, has_token, ts_len, token_len
MIN_SIZE = HEADER.size + CRC.size     # 44
MAX_UDP = 65507                       # largest IPv4 UDP payload
U64 = (1 << 64) - 1
MAX_ID = (1 << 63) - 1                # what SQLite's INTEGER holds
MAX_RANGES = 32
MAX_FRAGMENTS = 1 << 24


def crc(raw):
    return CRC.pack(zlib.crc32(raw))


def seal(raw):
    """raw (everything before the CRC) + its CRC-32."""
    return raw + crc(raw)


def reseal(datagram):
    """Replace the last 4 bytes by the CRC of the rest (after editing a datagram)."""
    return seal(datagram[:-4])


def header(kind, port, node, run, peer_run=0, counter=1, version=VERSION, flags=0,
           magic=MAGIC):
    return HEADER.pack(magic, version, kind, flags, port, node, run, peer_run, counter)


def frame(seq, blob, frag=0, nfrags=1, chunk=None, total=None, message_crc=None):
    """One frame carrying `chunk` (the whole blob by default) of the encoded message."""
    chunk = blob if chunk is None else chunk
    return (seq, frag, nfrags, len(blob) if total is None else total,
            zlib.crc32(blob) if message_crc is None else message_crc, chunk)


def data_body(stream, pn, base, frames, dst=0, cookie=0, tag=0):
    """frames: (seq, frag, nfrags, total, crc, chunk); see frame()."""
    out = [DATA_HEAD.pack(stream, pn, dst, cookie, base, tag)]
    for seq, frag, nfrags, total, message_crc, chunk in frames:
        out.append(FRAME.pack(seq, frag, nfrags, total, message_crc, len(chunk)) + chunk)
    return b"".join(out)


def ack_body(stream, committed, ranges, refused=0, limit=0, tag=0):
    return ACK_HEAD.pack(stream, committed, refused, limit, tag, len(ranges)) + b"".join(
        RANGE.pack(lo, hi) for lo, hi in ranges)


def hello_body(stream, cookie=0, tag=0):
    return HELLO_BODY.pack(stream, cookie, tag)


def message(kind, token, sent, data):
    """An encoded message; data: bytes (TEXT, BLOB), int (INTEGER), float (REAL), None."""
    if kind == 1:
        data = struct.pack("!q", data)
    elif kind == 2:
        data = struct.pack("!d", data)
    elif data is None:
        data = b""
    return MESSAGE_HEAD.pack(kind, token is not None, len(sent),
                             len(token) if token is not None else 0) + sent + (token or b"") + data


def fields(datagram):
    """The header of a datagram as a dict (no checks)."""
    magic, version, kind, flags, port, node, run, peer_run, counter = HEADER.unpack_from(
        datagram)
    return dict(magic=magic, version=version, type=kind, flags=flags, port=port, node=node,
                run=run, peer_run=peer_run, counter=counter)


def body(datagram):
    return datagram[HEADER.size:-CRC.size]


def with_header(datagram, **changes):
    """The datagram with header fields changed and its CRC recomputed."""
    f = fields(datagram)
    f.update(changes)
    return seal(header(f["type"], f["port"], f["node"], f["run"], f["peer_run"],
                       f["counter"], f["version"], f["flags"], f["magic"]) + body(datagram))


def data_fields(datagram):
    """(stream, pn, dst, cookie, base, [frames]) of a valid DATA; frames as frame()."""
    b = body(datagram)
    stream, pn, dst, cookie, base, _tag = DATA_HEAD.unpack_from(b)
    pos, frames = DATA_HEAD.size, []
    while pos < len(b):
        seq, frag, nfrags, total, message_crc, length = FRAME.unpack_from(b, pos)
        pos += FRAME.size
        frames.append((seq, frag, nfrags, total, message_crc, b[pos:pos + length]))
        pos += length
    return stream, pn, dst, cookie, base, frames


def data_tag(datagram):
    """The stream's tag a valid DATA carries (what ACKs and HELLOs must echo)."""
    return DATA_HEAD.unpack_from(body(datagram))[5]


def ack_fields(datagram):
    """(stream, committed, refused, limit, ranges) of a valid ACK."""
    b = body(datagram)
    stream, committed, refused, limit, _tag, count = ACK_HEAD.unpack_from(b)
    ranges = [RANGE.unpack_from(b, ACK_HEAD.size + i * RANGE.size) for i in range(count)]
    return stream, committed, refused, limit, ranges


def message_problem(blob):
    """Why an encoded message (a whole one, before fragmentation) is malformed, or None."""
    if len(blob) < MESSAGE_HEAD.size:
        return "message shorter than its head"
    kind, has_token, ts_len, token_len = MESSAGE_HEAD.unpack_from(blob)
    if kind > 4:
        return "unknown kind"
    if has_token > 1:
        return "has_token not 0 or 1"
    if not has_token and token_len:
        return "token length without a token"
    if token_len > 65535:
        return "token longer than 65535 bytes"
    data_at = MESSAGE_HEAD.size + ts_len + token_len
    if data_at > len(blob):
        return "lengths beyond the message"
    data = blob[data_at:]
    if kind == 0 and data:
        return "NULL with data"
    if kind in (1, 2) and len(data) != 8:
        return "INTEGER or REAL not 8 bytes"
    if kind == 2 and math.isnan(struct.unpack("!d", data)[0]):
        return "REAL NaN"
    return None


def _header_problem(f):
    if not (0 < f["node"] <= MAX_ID and 0 < f["run"] <= MAX_ID and f["peer_run"] <= MAX_ID
            and 0 < f["counter"] <= MAX_ID and f["port"]):
        return "header field out of range"
    return None


def _data_problem(b):
    if len(b) < DATA_HEAD.size:
        return "DATA shorter than its head"
    stream, pn, dst, _cookie, base, _tag = DATA_HEAD.unpack_from(b)
    if not (0 < stream <= MAX_ID and 0 < pn <= MAX_ID and dst <= MAX_ID and 0 < base <= MAX_ID):
        return "DATA field out of range"
    pos, frames = DATA_HEAD.size, 0
    while pos < len(b):
        if len(b) - pos < FRAME.size:
            return "frame head cut"
        seq, frag, nfrags, total, message_crc, length = FRAME.unpack_from(b, pos)
        pos += FRAME.size
        if pos + length > len(b):
            return "frame beyond the datagram"
        if not frag < nfrags <= MAX_FRAGMENTS:
            return "fragment index or count out of range"
        if not base <= seq < MAX_ID:
            return "seq below base or out of range"
        if total < MESSAGE_HEAD.size or not 0 < length <= total:
            return "frame length and message length do not fit"
        if nfrags == 1:
            chunk = b[pos:pos + length]
            if length != total:
                return "single fragment shorter than its message"
            if zlib.crc32(chunk) != message_crc or message_problem(chunk):
                return "malformed message: " + (message_problem(chunk) or "message CRC")
        pos += length
        frames += 1
    if not frames:
        return "DATA without frames"
    return None


def _ack_problem(b):
    if len(b) < ACK_HEAD.size:
        return "ACK shorter than its head"
    stream, committed, refused, _limit, _tag, count = ACK_HEAD.unpack_from(b)
    if count > MAX_RANGES or len(b) - ACK_HEAD.size != count * RANGE.size:
        return "ACK ranges do not add up"
    if not (0 < stream <= MAX_ID and committed <= MAX_ID and refused <= MAX_ID):
        return "ACK field out of range"
    for i in range(count):
        lo, hi = RANGE.unpack_from(b, ACK_HEAD.size + i * RANGE.size)
        if not 0 < lo <= hi <= MAX_ID:
            return "ACK range reversed or out of range"
    return None


def problem(datagram):
    """None when PROTOCOL.md calls the datagram intact and well formed, else the reason
    it must be dropped. Whole single-fragment messages are checked too."""
    if len(datagram) < MIN_SIZE:
        return "shorter than 44 bytes"
    f = fields(datagram)
    if f["magic"] != MAGIC:
        return "foreign magic"
    if f["version"] != VERSION:
        return "other version"
    if crc(datagram[:-4]) != datagram[-4:]:
        return "bad CRC"
    if f["flags"]:
        return "flags set"
    bad = _header_problem(f)
    if bad:
        return bad
    b = body(datagram)
    if f["type"] == DATA:
        return _data_problem(b)
    if f["type"] == ACK:
        return _ack_problem(b)
    if f["type"] == HELLO:
        if len(b) != HELLO_BODY.size:
            return "HELLO body not 24 bytes"
        return None if 0 < HELLO_BODY.unpack(b)[0] <= MAX_ID else "HELLO stream out of range"
    return "unknown type"


class Hostile:
    """Datagrams PROTOCOL.md says a receiver must drop, derived from real captured ones
    (`corpus`: bytes of intact datagrams) and from random bytes. make() returns
    (kind, datagram); every datagram it returns has problem(d) != None.

    Header changes get a recomputed CRC so that they reach the checks behind the CRC.
    Forgeries that would be *valid* are not made here: the tests that play an attacker
    who does not see the traffic make those themselves.
    """

    def __init__(self, rng, corpus, big_share=0.01):
        self.rng = rng
        self.corpus = [bytes(d) for d in corpus if problem(d) is None]
        if not self.corpus:
            raise ValueError("no intact datagram in the corpus")
        self.by_type = {t: [d for d in self.corpus if fields(d)["type"] == t] for t in TYPES}
        self.big_share = big_share
        self.kinds = [
            (self.random_bytes, 8), (self.real_head_random_body, 6), (self.bit_flips, 16),
            (self.truncated, 10), (self.extended, 6), (self.extended_resealed, 8),
            (self.other_magic, 3), (self.other_version, 6), (self.other_type, 5),
            (self.flags_set, 4), (self.retyped, 4), (self.broken_lengths, 10),
            (self.bad_fragment_index, 4), (self.no_frames, 2), (self.malformed_message, 6),
            (self.short_hello, 2), (self.out_of_range, 10),
        ]
        self._choices = [k for k, _ in self.kinds]
        self._weights = [w for _, w in self.kinds]

    # -- helpers --------------------------------------------------------------------
    def _real(self, kind=None):
        pool = self.by_type.get(kind) if kind else None
        return self.rng.choice(pool or self.corpus)

    def _bytes(self, n):
        return self.rng.randbytes(n)

    def _size(self):
        if self.rng.random() < self.big_share:
            return self.rng.randrange(8000, MAX_UDP + 1)
        return self.rng.randrange(0, 1500)

    # -- kinds ------------------------------------------------------------------------
    def random_bytes(self):
        return self._bytes(self._size())

    def real_head_random_body(self):
        d = self._real()
        return d[:HEADER.size] + self._bytes(max(4, self._size() - HEADER.size))

    def bit_flips(self):
        d = bytearray(self._real())
        for _ in range(self.rng.choice((1, 1, 1, 2, 3, 8))):
            bit = self.rng.randrange(len(d) * 8)
            d[bit // 8] ^= 1 << (bit % 8)
        return bytes(d)

    def truncated(self):
        d = self._real()
        return d[:self.rng.randrange(0, len(d))]

    def extended(self):
        d = self._real()
        n = self.rng.randrange(8000, MAX_UDP - len(d)) if self.rng.random() < self.big_share \
            else self.rng.randrange(1, 64)
        return d + self._bytes(n)

    def extended_resealed(self):
        """Bytes after the last frame (too few for a frame head), after the ranges or the
        HELLO body; the CRC is right."""
        d = self._real()
        t = fields(d)["type"]
        if t == DATA:
            extra = self._bytes(self.rng.randrange(1, FRAME.size))
        elif t == ACK and self.rng.random() < self.big_share * 10:
            extra = self._bytes(self.rng.randrange(8000, MAX_UDP - len(d)))
        else:
            extra = self._bytes(self.rng.randrange(1, 40))
        return seal(d[:-4] + extra)

    def other_magic(self):
        magic = self._bytes(3)
        while magic == MAGIC:
            magic = self._bytes(3)
        return with_header(self._real(), magic=magic)

    def other_version(self):
        return with_header(self._real(), version=self.rng.choice(
            [0, 1, 3, 127, 128, 255] + [self.rng.randrange(3, 256)]))

    def other_type(self):
        return with_header(self._real(), type=self.rng.choice(
            [0, 4, 5, 255, self.rng.randrange(4, 256)]))

    def flags_set(self):
        return with_header(self._real(), flags=self.rng.randrange(1, 256))

    def retyped(self):
        """A real body under another known type (CRC right); kept only if invalid."""
        d = self._real()
        t = fields(d)["type"]
        return with_header(d, type=self.rng.choice([k for k in TYPES if k != t]))

    def broken_lengths(self):
        """A length field that does not add up, CRC right: a frame longer than what is
        left, an ACK count off by some, a DATA or ACK head cut short."""
        d = self._real(self.rng.choice((DATA, ACK)))
        b = bytearray(body(d))
        t = fields(d)["type"]
        what = self.rng.random()
        if t == DATA and what < 0.6:
            pos = DATA_HEAD.size + FRAME.size - 2  # the first frame's len field
            left = len(b) - pos - 2
            struct.pack_into("!H", b, pos, self.rng.randrange(left + 1, 65536))
        elif t == ACK and what < 0.6:
            at = ACK_HEAD.size - 2
            count = struct.unpack_from("!H", b, at)[0]
            struct.pack_into("!H", b, at, (count + self.rng.randrange(1, 65536)) % 65536)
        else:
            head = DATA_HEAD.size if t == DATA else ACK_HEAD.size
            b = b[:self.rng.randrange(0, head)]
        return seal(d[:HEADER.size] + bytes(b))

    def bad_fragment_index(self):
        d = self._real(DATA)
        b = bytearray(body(d))
        pos = DATA_HEAD.size + 8  # first frame: frag, nfrags
        nfrags = struct.unpack_from("!I", b, pos + 4)[0]
        if self.rng.random() < 0.5:
            struct.pack_into("!I", b, pos + 4, 0)
        else:
            struct.pack_into("!I", b, pos, self.rng.randrange(nfrags, 1 << 32))
        return seal(d[:HEADER.size] + bytes(b))

    def no_frames(self):
        d = self._real(DATA)
        return seal(d[:HEADER.size] + body(d)[:DATA_HEAD.size])

    def malformed_message(self):
        """A whole single-fragment message whose encoding is broken (its CRC right), in an
        otherwise intact DATA datagram, for a sequence number the receiver has not
        stored: from the real sender's stream (far ahead) or from a new one."""
        d = self._real(DATA)
        stream, pn, dst, cookie, base, _frames = data_fields(d)
        f = fields(d)
        if self.rng.random() < 0.5:
            f["node"] = self.rng.randrange(1, 1 << 63)
            stream = self.rng.randrange(1, 1 << 63)
            seq = base = 1
        else:
            seq = base + (1 << 40) + self.rng.randrange(1 << 20)
        good = message(3, b"tok", b"2026-01-01 00:00:00", b"hostile")
        bad = self.rng.choice([
            bytes([self.rng.randrange(5, 256)]) + good[1:],                 # unknown kind
            good[:1] + bytes([self.rng.randrange(2, 256)]) + good[2:],      # has_token
            good[:2] + struct.pack("!H", 60000) + good[4:],                 # ts too long
            good[:4] + struct.pack("!I", 1 << 30) + good[8:],               # token too long
            good[:self.rng.randrange(0, MESSAGE_HEAD.size)] or b"\x03",    # head cut
            message(0, None, b"", b"") + b"data for a NULL",                # NULL with data
            MESSAGE_HEAD.pack(1, 0, 0, 0) + b"\x01\x02",                     # INTEGER 2 bytes
            MESSAGE_HEAD.pack(2, 0, 0, 0) + struct.pack("!d", math.nan),    # REAL NaN
        ])
        raw = header(DATA, f["port"], f["node"], f["run"], f["peer_run"], f["counter"]) + \
            data_body(stream, pn, base, [frame(seq, bad)], dst, cookie)
        return seal(raw)

    def short_hello(self):
        d = self._real(HELLO) if self.by_type[HELLO] else self._real()
        f = fields(d)
        return seal(header(HELLO, f["port"], f["node"], f["run"], f["peer_run"], f["counter"])
                    + self._bytes(self.rng.choice((0, 1, 2, 3, 5, 8, 15, 17, 64))))

    def out_of_range(self):
        """A valid-looking datagram with one integer field beyond what a receiver can
        represent or store (CRC right)."""
        d = bytearray(self._real())
        t = fields(bytes(d))["type"]
        h = HEADER.size
        choices = [(8, "!Q", self.rng.choice((0, 1 << 63, U64))),      # node
                   (16, "!Q", self.rng.choice((0, 1 << 63, U64))),     # run
                   (24, "!Q", self.rng.choice((1 << 63, U64))),        # peer_run
                   (32, "!Q", self.rng.choice((0, 1 << 63, U64))),     # counter
                   (6, "!H", 0)]                                       # port
        if t == DATA:
            choices += [(h, "!Q", self.rng.choice((0, 1 << 63, U64))),       # stream
                        (h + 8, "!Q", self.rng.choice((0, 1 << 63, U64))),   # pn
                        (h + 32, "!Q", self.rng.choice((0, 1 << 63, U64))),  # base
                        (h + DATA_HEAD.size, "!Q", self.rng.choice((1 << 63, U64)))]  # seq
        elif t == ACK:
            choices += [(h, "!Q", self.rng.choice((0, 1 << 63, U64))),       # stream
                        (h + 8, "!Q", self.rng.choice((1 << 63, U64)))]      # committed
        at, fmt, value = self.rng.choice(choices)
        struct.pack_into(fmt, d, at, value)
        return reseal(bytes(d))

    def make(self):
        """One hostile datagram: (kind name, bytes) with problem(bytes) != None."""
        for _ in range(100):
            kind = self.rng.choices(self._choices, self._weights)[0]
            d = kind()
            if len(d) <= MAX_UDP and problem(d) is not None:
                return kind.__name__, d
        raise RuntimeError("could not make an invalid datagram")


def exchange(sender, receiver, relay, tag, datas, timeout=20):
    """Real traffic: the messages `datas` (token tag) from the Daemon `sender` through
    `relay` (a Relay with capture=True in front of `receiver`), until the receiver has
    stored them all and the sender has deleted them. The sender deletes a row only on an
    acknowledgement, which came back through the relay, so by then the relay has seen the
    DATA and the acknowledgements. Returns (forward, reverse): what it captured each way
    (since it started or its reset_stats())."""
    dbmod.enqueue_many(sender.db, [("127.0.0.1", relay.port, tag, d) for d in datas])
    wait_until(lambda: receiver.count("mqin", "token=?", (tag,)) == len(datas) and
               sender.count("mqout", "token=?", (tag,)) == 0, timeout,
               f"{tag}: {len(datas)} messages delivered through the relay",
               describe=lambda: dbmod.describe_queues(sender.db, receiver.db))
    return relay.captured("forward"), relay.captured("reverse")


# -- keyed peers (PROTOCOL.md "Keyed peers") ------------------------------------------------

FLAG_SEALED = 0x01
SEAL_SALT = 4      # random bytes after the header, the last 4 of the nonce
SEAL_TAG = 16      # AES-GCM's tag at the end
SESSION_INFO = b"tinymq v2 session key"


def session_key(psk, src_run, dst_run):
    """The AES-256-GCM key of datagrams from run src_run to dst_run (dst_run as the source
    knows it, 0 before it does): HKDF-SHA256 of the pre-shared key, salt both runs."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(hashes.SHA256(), 32, salt=struct.pack("!QQ", src_run, dst_run),
                info=SESSION_INFO).derive(psk)


def aead_seal(datagram, psk, salt=None):
    """The sealed form of an unsealed datagram (header + body + CRC, as seal() makes it):
    header with the SEALED flag, 4 random bytes, body encrypted and authenticated with
    the header as associated data (no CRC). The header's counter is the nonce: a
    datagram sealed twice with one counter is a replay to the receiver."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    import os
    f = fields(datagram)
    head = header(f["type"], f["port"], f["node"], f["run"], f["peer_run"], f["counter"],
                  f["version"], f["flags"] | FLAG_SEALED, f["magic"])
    salt = os.urandom(SEAL_SALT) if salt is None else salt
    aead = AESGCM(session_key(psk, f["run"], f["peer_run"]))
    return head + salt + aead.encrypt(struct.pack("!Q", f["counter"]) + salt, body(datagram),
                                      head)


def aead_open(datagram, psk):
    """The unsealed form (flag cleared, CRC appended) of a sealed datagram, or None when
    `psk` does not open it."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    if len(datagram) < HEADER.size + SEAL_SALT + SEAL_TAG:
        return None
    f = fields(datagram)
    head, salt = datagram[:HEADER.size], datagram[HEADER.size:HEADER.size + SEAL_SALT]
    try:
        plain = AESGCM(session_key(psk, f["run"], f["peer_run"])).decrypt(
            struct.pack("!Q", f["counter"]) + salt, datagram[HEADER.size + SEAL_SALT:], head)
    except InvalidTag:
        return None
    return seal(header(f["type"], f["port"], f["node"], f["run"], f["peer_run"], f["counter"],
                       f["version"], f["flags"] & ~FLAG_SEALED, f["magic"]) + plain)


def is_sealed(datagram):
    return len(datagram) >= HEADER.size and bool(fields(datagram)["flags"] & FLAG_SEALED)


# -- a minimal sender of one's own --------------------------------------------------------

class Client:
    """A minimal tinymq peer written from PROTOCOL.md, with a UDP socket of its own: what
    a test needs to play a sender that receives at its address (an attacker with a host
    of its own is one), not a daemon.

        c = Client("127.0.0.2", rng)      # any loopback address is a host of its own
        c.handshake(("127.0.0.1", port))  # DATA without cookie -> the daemon's HELLO
        c.send(c.data(stream, base, [frame(seq, message(...))]))  # taken: it echoes
                                          # the daemon's run and this address's cookie
        c.sync()                          # the daemon has handled all sent before

    handshake() is the cookie round trip: the first DATA echoes nothing, the HELLO that
    comes back carries the daemon's node and run (header) and the cookie of this address
    (body). data() builds DATA that echoes them unless told otherwise. With `psk` (a
    pre-shared key the daemon has for this address) it is a keyed peer: send() seals
    what it sends with it, receive() opens what comes back (what it cannot open stays as
    it came).
    """

    def __init__(self, host="127.0.0.1", rng=None, node=None, run=None, port=None, psk=None):
        import random
        import socket
        self.rng = rng or random.Random()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self.sock.bind((host, 0))
        self.address = self.sock.getsockname()[:2]
        self.port = port or self.address[1]  # the listening port the header claims
        self.node = node or self.rng.randrange(1, MAX_ID + 1)
        self.run = run or self.rng.randrange(1, MAX_ID + 1)
        self.counter = 0
        self.pn = 0
        self.target = None
        self.peer_node = self.peer_run = self.cookie = 0
        self.psk = psk
        self.sent_bytes = 0
        self._sync_stream = self.rng.randrange(1, MAX_ID + 1)

    def close(self):
        self.sock.close()

    def next_counter(self):
        self.counter += 1
        return self.counter

    def header(self, kind, peer_run=None, node=None, counter=None, port=None, run=None):
        return header(kind, port or self.port, node or self.node, run or self.run,
                      self.peer_run if peer_run is None else peer_run,
                      counter or self.next_counter())

    def data(self, stream, base, frames, pn=None, dst=0, cookie=None, peer_run=None,
             node=None):
        """A DATA datagram (CRC sealed); frames as frame() makes them; by default it
        echoes what handshake() learned."""
        if pn is None:
            self.pn += 1
            pn = self.pn
        return seal(self.header(DATA, peer_run, node) + data_body(
            stream, pn, base, frames, dst, self.cookie if cookie is None else cookie))

    def send(self, datagram, addr=None):
        """Send to addr (the handshake's target by default); False if the kernel refused
        (e.g. a full send buffer): the datagram was simply not sent."""
        if self.psk is not None and not is_sealed(datagram):
            datagram = aead_seal(datagram, self.psk)
        try:
            self.sock.sendto(datagram, addr or self.target)
        except OSError:
            return False
        self.sent_bytes += len(datagram)
        return True

    def receive(self, timeout=0.0):
        """[(datagram, address)] that came, waiting up to `timeout` for the first."""
        import select
        out = []
        wait = timeout
        while select.select([self.sock], [], [], wait)[0]:
            try:
                d, source = self.sock.recvfrom(65535)
            except OSError:
                continue
            if self.psk is not None and is_sealed(d):
                d = aead_open(d, self.psk) or d
            out.append((d, source))
            wait = 0
        return out

    def handshake(self, addr, timeout=5.0):
        """The cookie round trip with the daemon at addr; returns self."""
        import time
        self.target = addr
        stream = self.rng.randrange(1, MAX_ID + 1)
        probe = message(3, None, b"", b"handshake")  # never stored: it is not taken
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send(self.data(stream, 1, [frame(1, probe, nfrags=2, chunk=probe[:1])],
                                peer_run=0, cookie=0))
            for d, source in self.receive(min(1.0, max(0.0, deadline - time.monotonic()))):
                if problem(d) is None and fields(d)["type"] == HELLO and \
                        HELLO_BODY.unpack(body(d))[0] == stream:
                    f = fields(d)
                    self.peer_node, self.peer_run = f["node"], f["run"]
                    self.cookie = HELLO_BODY.unpack(body(d))[1]
                    # the stream sync() uses, made now: later, this address's share of
                    # streams and memory may be taken by what the client sends
                    self.sync(max(1.0, deadline - time.monotonic()))
                    return self
        raise AssertionError(f"no HELLO from {addr} within {timeout} s")

    def sync(self, timeout=10.0):
        """Wait until the daemon has handled everything this client sent before: a DATA
        on a stream of its own (one fragment of a message that never completes, so
        nothing is stored; the daemon drops such a fragment after a minute, so sync()
        serves for that long) is acknowledged once the daemon has read it, and the
        daemon reads its socket in order. Returns the replies that came meanwhile."""
        import time
        probe = message(3, None, b"", b"sync" * 10)
        self.pn += 1
        pn = self.pn
        self.send(self.data(self._sync_stream, 1, [frame(1, probe, nfrags=2,
                                                         chunk=probe[:1])], pn=pn))
        deadline = time.monotonic() + timeout
        got = []
        while time.monotonic() < deadline:
            for d, source in self.receive(0.05):
                got.append((d, source))
                if problem(d) is None and fields(d)["type"] == ACK:
                    stream, _c, _r, _l, ranges = ack_fields(d)
                    if stream == self._sync_stream and any(lo <= pn <= hi for lo, hi in ranges):
                        return got
        raise AssertionError(f"no acknowledgement of the sync DATA within {timeout} s")
