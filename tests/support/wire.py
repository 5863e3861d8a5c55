"""The wire format as docs/PROTOCOL.md describes it, written independently of
tinymqd/protocol.py: build datagrams, take captured ones apart, tell whether one is
valid by the document's rules, and derive hostile variants of real datagrams.

    raw = seal(header(DATA, port, src, dst) + data_body(...))
    problem(raw)  -> None for a valid datagram, else why PROTOCOL.md says to drop it
    Hostile(rng, corpus).make() -> (kind, datagram) that PROTOCOL.md says to drop
    exchange(a, b, relay, tag, datas) -> real datagrams both ways, captured by a relay
"""

import struct
import zlib

from tests.support import db as dbmod
from tests.support.wait import wait_until

MAGIC = b"TMQ"
VERSION = 1
DATA, ACK, HELLO = 1, 2, 3
TYPES = (DATA, ACK, HELLO)

HEADER = struct.Struct("!3sBBBHqq")   # magic, version, type, flags, port, src, dst
CRC = struct.Struct("!I")
DATA_HEAD = struct.Struct("!IIQQ")    # stream, boot, pn, base
FRAME = struct.Struct("!QIIH")        # seq, frag, nfrags, len
ACK_HEAD = struct.Struct("!IQIH")     # stream, committed, boot, count
RANGE = struct.Struct("!QQ")
HELLO_BODY = struct.Struct("!I")
MESSAGE_HEAD = struct.Struct("!BBHI")  # kind, has_token, ts_len, token_len
MIN_SIZE = HEADER.size + CRC.size     # 28
MAX_UDP = 65507                       # largest IPv4 UDP payload


def crc(raw):
    return CRC.pack(zlib.crc32(raw))


def seal(raw):
    """raw (everything before the CRC) + its CRC-32."""
    return raw + crc(raw)


def reseal(datagram):
    """Replace the last 4 bytes by the CRC of the rest (after editing a datagram)."""
    return seal(datagram[:-4])


def header(kind, port, src, dst, version=VERSION, flags=0, magic=MAGIC):
    return HEADER.pack(magic, version, kind, flags, port, src, dst)


def data_body(stream, boot, pn, base, frames):
    """frames: (seq, frag, nfrags, chunk)."""
    out = [DATA_HEAD.pack(stream, boot, pn, base)]
    for seq, frag, nfrags, chunk in frames:
        out.append(FRAME.pack(seq, frag, nfrags, len(chunk)) + chunk)
    return b"".join(out)


def ack_body(stream, committed, boot, ranges):
    return ACK_HEAD.pack(stream, committed, boot, len(ranges)) + b"".join(
        RANGE.pack(lo, hi) for lo, hi in ranges)


def message(kind, token, sent, data):
    return MESSAGE_HEAD.pack(kind, token is not None, len(sent),
                             len(token) if token is not None else 0) + sent + (token or b"") + data


def fields(datagram):
    """The header of a datagram as a dict (no checks)."""
    magic, version, kind, flags, port, src, dst = HEADER.unpack_from(datagram)
    return dict(magic=magic, version=version, type=kind, flags=flags, port=port, src=src,
                dst=dst)


def body(datagram):
    return datagram[HEADER.size:-CRC.size]


def with_header(datagram, **changes):
    """The datagram with header fields changed and its CRC recomputed."""
    f = fields(datagram)
    f.update(changes)
    return seal(header(f["type"], f["port"], f["src"], f["dst"], f["version"], f["flags"],
                       f["magic"]) + body(datagram))


def data_frames(datagram):
    """(stream, boot, pn, base, [(seq, frag, nfrags, chunk), ...]) of a valid DATA."""
    b = body(datagram)
    stream, boot, pn, base = DATA_HEAD.unpack_from(b)
    pos, frames = DATA_HEAD.size, []
    while pos < len(b):
        seq, frag, nfrags, length = FRAME.unpack_from(b, pos)
        pos += FRAME.size
        frames.append((seq, frag, nfrags, b[pos:pos + length]))
        pos += length
    return stream, boot, pn, base, frames


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
    if MESSAGE_HEAD.size + ts_len + token_len > len(blob):
        return "lengths beyond the message"
    if kind == 0 and len(blob) > MESSAGE_HEAD.size + ts_len + token_len:
        return "NULL with data"
    return None


def problem(datagram):
    """None when PROTOCOL.md calls the datagram intact and well formed, else the reason
    it must be dropped. Whole single-fragment messages are checked too."""
    if len(datagram) < MIN_SIZE:
        return "shorter than 28 bytes"
    f = fields(datagram)
    if f["magic"] != MAGIC:
        return "foreign magic"
    if f["version"] != VERSION:
        return "other version"
    if crc(datagram[:-4]) != datagram[-4:]:
        return "bad CRC"
    if f["flags"]:
        return "flags set"
    b = body(datagram)
    if f["type"] == DATA:
        if len(b) < DATA_HEAD.size:
            return "DATA shorter than its head"
        pos, frames = DATA_HEAD.size, 0
        while pos < len(b):
            if len(b) - pos < FRAME.size:
                return "frame head cut"
            _seq, frag, nfrags, length = FRAME.unpack_from(b, pos)
            pos += FRAME.size
            if pos + length > len(b):
                return "frame beyond the datagram"
            if not frag < nfrags:
                return "fragment index not below the count"
            if nfrags == 1 and message_problem(b[pos:pos + length]):
                return "malformed message: " + message_problem(b[pos:pos + length])
            pos += length
            frames += 1
        if not frames:
            return "DATA without frames"
        return None
    if f["type"] == ACK:
        if len(b) < ACK_HEAD.size:
            return "ACK shorter than its head"
        count = ACK_HEAD.unpack_from(b)[3]
        if len(b) - ACK_HEAD.size != count * RANGE.size:
            return "ACK ranges do not add up"
        return None
    if f["type"] == HELLO:
        return None if len(b) == HELLO_BODY.size else "HELLO body not 4 bytes"
    return "unknown type"


class Hostile:
    """Datagrams PROTOCOL.md says a receiver must drop, derived from real captured ones
    (`corpus`: bytes of intact datagrams) and from random bytes. make() returns
    (kind, datagram); every datagram it returns has problem(d) != None.

    Header changes get a recomputed CRC so that they reach the checks behind the CRC.
    Forgeries that would be *valid* (another source node, a raised base, an ACK from the
    destination's own address naming rows it has) are not made here: version 1 does not
    authenticate, so those cannot be told from real traffic (see SEALED in PROTOCOL.md).
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
            (self.short_hello, 2),
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
        boot id; the CRC is right."""
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
            [0, 2, 3, 127, 128, 255] + [self.rng.randrange(2, 256)]))

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
            pos = DATA_HEAD.size + 16  # the first frame's len field
            left = len(b) - pos - 2
            struct.pack_into("!H", b, pos, self.rng.randrange(left + 1, 65536))
        elif t == ACK and what < 0.6:
            count = struct.unpack_from("!H", b, 16)[0]
            struct.pack_into("!H", b, 16, (count + self.rng.randrange(1, 65536)) % 65536)
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
        """A whole single-fragment message whose encoding is broken, in an otherwise
        intact DATA datagram, for a sequence number the receiver has not stored: from the
        real sender's stream (far ahead) or from a new one."""
        d = self._real(DATA)
        stream, boot, pn, base, frames = data_frames(d)
        f = fields(d)
        if self.rng.random() < 0.5:
            f["src"] = self.rng.randrange(1, 1 << 63)
            stream = self.rng.randrange(1, 1 << 32)
            seq = 1
            base = 1
        else:
            seq = (1 << 40) + self.rng.randrange(1 << 20)
        good = message(3, b"tok", b"2026-01-01 00:00:00", b"hostile")
        bad = self.rng.choice([
            bytes([self.rng.randrange(5, 256)]) + good[1:],                 # unknown kind
            good[:1] + bytes([self.rng.randrange(2, 256)]) + good[2:],      # has_token
            good[:2] + struct.pack("!H", 60000) + good[4:],                 # ts too long
            good[:4] + struct.pack("!I", 1 << 30) + good[8:],               # token too long
            good[:self.rng.randrange(0, MESSAGE_HEAD.size)],                # head cut
            message(0, None, b"", b"data for a NULL"),                      # NULL with data
        ])
        raw = header(DATA, f["port"], f["src"], f["dst"]) + data_body(
            stream, boot, pn, base, [(seq, 0, 1, bad)])
        return seal(raw)

    def short_hello(self):
        d = self._real(HELLO) if self.by_type[HELLO] else self._real()
        f = fields(d)
        return seal(header(HELLO, f["port"], f["src"], f["dst"]) +
                    self._bytes(self.rng.choice((0, 1, 2, 3, 5, 8, 64))))

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
