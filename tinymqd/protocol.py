"""The wire format, version 2: binary, checksummed or sealed datagrams (see
docs/PROTOCOL.md).

Every datagram is HEADER + body + CRC32 of everything before it, or, for keyed peers,
HEADER + the body sealed (sealing.py). Nothing is parsed by delimiters; every length is
explicit and checked against what arrived, and every field against what the receiver
can represent (a datagram that does not fit is dropped).
"""

import collections
import math
import struct
import zlib

from tinymqd import sealing
from tinymqd.constants import MAX_TOKEN_BYTES

MAGIC = b"TMQ"
VERSION = 2

DATA = 1
ACK = 2
HELLO = 3
TYPES = (DATA, ACK, HELLO)

FLAG_SEALED = 0x01  # the body is sealed with a pre-shared key (sealing.py)

# magic, version, type, flags, sender's listening port, source node, source run, the
# destination's run as the source knows it (0: not known), and a counter that numbers
# every datagram of the source's run (never reused)
HEADER = struct.Struct("!3sBBBHQQQQ")
CRC = struct.Struct("!I")
# stream, its packet number, destination node (0: not known), cookie, base, and the
# stream's tag (random per stream and run: ACKs and HELLOs must echo it)
DATA_HEAD = struct.Struct("!QQQQQQ")
# seq, fragment index, fragment count, length and CRC-32 of the whole encoded message,
# chunk length
FRAME = struct.Struct("!QIIIIH")
# stream, committed, refused seq (0: none), the refusing receiver's max_message, the
# stream's tag (echoed), the count of ranges
ACK_HEAD = struct.Struct("!QQQQQH")
RANGE = struct.Struct("!QQ")  # lowest, highest packet number received (inclusive)
HELLO_BODY = struct.Struct("!QQQ")  # a stream of the destination node, cookie, its tag

OVERHEAD = HEADER.size + CRC.size
DATA_OVERHEAD = OVERHEAD + DATA_HEAD.size
SEAL_EXTRA = sealing.OVERHEAD - CRC.size  # a sealed datagram is this much longer
MAX_FRAGMENTS = 1 << 24
MAX_ACK_RANGES = 32
# What SQLite and this receiver can hold: sequence numbers, packet numbers and stream
# ids are positive 63-bit integers (SQLite INTEGER).
MAX_ID = (1 << 63) - 1

# Message (before fragmentation): kind, has token, sent-ts length, token length.
MESSAGE_HEAD = struct.Struct("!BBHI")
KIND_NULL, KIND_INTEGER, KIND_REAL, KIND_TEXT, KIND_BLOB = range(5)
MAX_SENT_BYTES = 0xFFFF  # the sender's ts travels with a 16-bit length
INTEGER = struct.Struct("!q")  # INTEGER data: 64-bit signed, as SQLite stores it
REAL = struct.Struct("!d")  # REAL data: IEEE 754 double, exactly (also +-Inf)

# key: the name of the key that authenticated the datagram (None: unsealed)
Header = collections.namedtuple("Header", "type flags port node run peer_run counter key",
                                defaults=(None,))
Data = collections.namedtuple("Data", "header stream pn dst cookie base tag frames")
Frame = collections.namedtuple("Frame", "seq frag nfrags total crc chunk")
Ack = collections.namedtuple("Ack", "header stream committed refused limit tag ranges")
Hello = collections.namedtuple("Hello", "header stream cookie tag")
Message = collections.namedtuple("Message", "kind token sent data")


class BadDatagram(Exception):
    """A datagram that is not ours or not intact; str() is a short reason for counters."""


class Origin(collections.namedtuple("Origin", "port node run counter sessions",
                                    defaults=(None,))):
    """Who sends: our listening port, node id, run id, the run's datagram counter (an
    itertools.count shared by every thread that sends), and the session keys for
    sealing (sealing.Sessions; None without keys)."""

    def finish(self, kind, peer_run, parts, key=None, node=None):
        """The datagram: header + body, with its CRC, or sealed with `key` (bytes).
        node: a stream's own node id, when it is not ours (see identity.py)."""
        counter = next(self.counter)
        flags = 0 if key is None else FLAG_SEALED
        header = HEADER.pack(MAGIC, VERSION, kind, flags, self.port, node or self.node,
                             self.run, peer_run, counter)
        if key is None:
            raw = b"".join([header, *parts])
            return raw + CRC.pack(zlib.crc32(raw))
        return sealing.seal(self.sessions, key, header, b"".join(parts), self.run,
                            peer_run, counter)


def encode_data(origin, node, peer_run, stream, pn, dst, cookie, base, frames, key=None,
                tag=0):
    """frames: iterable of (seq, frag, nfrags, total, crc, chunk bytes). node: the
    stream's node id (None: ours). key: seal with it (bytes; None: unsealed)."""
    parts = [DATA_HEAD.pack(stream, pn, dst, cookie, base, tag)]
    for seq, frag, nfrags, total, crc, chunk in frames:
        parts.append(FRAME.pack(seq, frag, nfrags, total, crc, len(chunk)))
        parts.append(chunk)
    return origin.finish(DATA, peer_run, parts, key, node)


def encode_ack(origin, peer_run, stream, committed, ranges, refused=0, limit=0, key=None,
               tag=0):
    """ranges: (low, high) packet numbers received, most recent first."""
    parts = [ACK_HEAD.pack(stream, committed, refused, limit, tag, len(ranges))]
    parts.extend(RANGE.pack(lo, hi) for lo, hi in ranges)
    return origin.finish(ACK, peer_run, parts, key)


def encode_hello(origin, peer_run, stream, cookie=0, key=None, tag=0):
    return origin.finish(HELLO, peer_run, [HELLO_BODY.pack(stream, cookie, tag)], key)


def decode(datagram, keys_for=None, sessions=None):
    """Parse and verify one datagram; raise BadDatagram with a short reason.
    keys_for(): the [(name, key)] that may have sealed it (None: sealed ones are
    dropped); sessions: a sealing.Sessions."""
    if not isinstance(datagram, bytes):
        datagram = bytes(datagram)  # slices below must be immutable copies
    size = len(datagram)
    if size < OVERHEAD:
        raise BadDatagram("truncated")
    magic, version, kind, flags, port, node, run, peer_run, counter = HEADER.unpack_from(
        datagram)
    if magic != MAGIC:
        raise BadDatagram("foreign")
    if version != VERSION:
        raise BadDatagram("older version" if version < VERSION else "unsupported version")
    if not (0 < node <= MAX_ID and 0 < run <= MAX_ID and peer_run <= MAX_ID
            and 0 < counter <= MAX_ID and port):
        raise BadDatagram("field out of range")
    key = None
    if flags == FLAG_SEALED:
        keys = keys_for() if keys_for is not None else None
        if not keys:
            raise BadDatagram("sealed, no key for its source")
        try:
            datagram, key = sealing.open_sealed(sessions, keys, datagram, HEADER.size, run,
                                                peer_run, counter)
        except sealing.NotAuthentic:
            raise BadDatagram("sealed, not authentic") from None
        datagram = bytes(HEADER.size) + datagram  # the body at its usual place
        body_end = len(datagram)
    elif flags:
        raise BadDatagram("unknown flags")
    else:
        body_end = size - CRC.size
        (crc,) = CRC.unpack_from(datagram, body_end)
        if zlib.crc32(memoryview(datagram)[:body_end]) != crc:
            raise BadDatagram("bad checksum")
    header = Header(kind, flags, port, node, run, peer_run, counter, key)
    if kind == DATA:
        return _decode_data(header, datagram, HEADER.size, body_end)
    if kind == ACK:
        return _decode_ack(header, datagram, HEADER.size, body_end)
    if kind == HELLO:
        if body_end - HEADER.size != HELLO_BODY.size:
            raise BadDatagram("malformed hello")
        stream, cookie, tag = HELLO_BODY.unpack_from(datagram, HEADER.size)
        if not 0 < stream <= MAX_ID:
            raise BadDatagram("field out of range")
        return Hello(header, stream, cookie, tag)
    raise BadDatagram("unknown type")


def _decode_data(header, datagram, pos, end):
    if end - pos < DATA_HEAD.size:
        raise BadDatagram("malformed data")
    stream, pn, dst, cookie, base, tag = DATA_HEAD.unpack_from(datagram, pos)
    if not (0 < stream <= MAX_ID and 0 < pn <= MAX_ID and dst <= MAX_ID
            and 0 < base <= MAX_ID):
        raise BadDatagram("field out of range")
    pos += DATA_HEAD.size
    frames = []
    while pos < end:
        if end - pos < FRAME.size:
            raise BadDatagram("malformed frame")
        seq, frag, nfrags, total, crc, length = FRAME.unpack_from(datagram, pos)
        pos += FRAME.size
        if (pos + length > end or not 0 <= frag < nfrags <= MAX_FRAGMENTS
                or not base <= seq < MAX_ID or total < MESSAGE_HEAD.size
                or not 0 < length <= total or (nfrags == 1 and length != total)):
            raise BadDatagram("malformed frame")
        frames.append(Frame(seq, frag, nfrags, total, crc, datagram[pos:pos + length]))
        pos += length
    if not frames:
        raise BadDatagram("empty data")
    return Data(header, stream, pn, dst, cookie, base, tag, frames)


def _decode_ack(header, datagram, pos, end):
    if end - pos < ACK_HEAD.size:
        raise BadDatagram("malformed ack")
    stream, committed, refused, limit, tag, count = ACK_HEAD.unpack_from(datagram, pos)
    pos += ACK_HEAD.size
    if count > MAX_ACK_RANGES or end - pos != count * RANGE.size:
        raise BadDatagram("malformed ack")
    if not (0 < stream <= MAX_ID and committed <= MAX_ID and refused <= MAX_ID):
        raise BadDatagram("field out of range")
    ranges = [RANGE.unpack_from(datagram, pos + i * RANGE.size) for i in range(count)]
    if any(not 0 < lo <= hi <= MAX_ID for lo, hi in ranges):
        raise BadDatagram("malformed ack")
    return Ack(header, stream, committed, refused, limit, tag, ranges)


def encode_message(kind, token, sent, data):
    """One message before fragmentation. token: bytes or None; sent: bytes; data: bytes
    for TEXT and BLOB, int for INTEGER, float for REAL, None for NULL."""
    if kind == KIND_INTEGER:
        data = INTEGER.pack(data)
    elif kind == KIND_REAL:
        data = REAL.pack(data)
    elif data is None:
        data = b""
    head = MESSAGE_HEAD.pack(kind, token is not None, len(sent),
                             len(token) if token is not None else 0)
    return b"".join((head, sent, token or b"", data))


def decode_message(blob):
    """The message a sender encoded; data as encode_message takes it."""
    if len(blob) < MESSAGE_HEAD.size:
        raise BadDatagram("malformed message")
    kind, has_token, sent_len, token_len = MESSAGE_HEAD.unpack_from(blob)
    pos = MESSAGE_HEAD.size
    if (kind > KIND_BLOB or has_token > 1 or (not has_token and token_len)
            or token_len > MAX_TOKEN_BYTES or pos + sent_len + token_len > len(blob)):
        raise BadDatagram("malformed message")
    sent = bytes(blob[pos:pos + sent_len])
    pos += sent_len
    token = bytes(blob[pos:pos + token_len]) if has_token else None
    pos += token_len
    data = bytes(blob[pos:])
    if kind == KIND_NULL:
        if data:
            raise BadDatagram("malformed message")
        data = None
    elif kind == KIND_INTEGER:
        if len(data) != INTEGER.size:
            raise BadDatagram("malformed message")
        (data,) = INTEGER.unpack(data)
    elif kind == KIND_REAL:
        if len(data) != REAL.size:
            raise BadDatagram("malformed message")
        (data,) = REAL.unpack(data)
        if math.isnan(data):  # SQLite has no NaN (it stores NULL): never sent
            raise BadDatagram("malformed message")
    return Message(kind, token, sent, data)


def message_crc(blob):
    """The CRC-32 each fragment carries of the whole encoded message."""
    return zlib.crc32(blob)


def chunk_size(max_datagram):
    """Largest fragment payload so that a one-frame datagram fits max_datagram, sealed
    or not."""
    return max_datagram - DATA_OVERHEAD - SEAL_EXTRA - FRAME.size
