"""The wire format: binary, versioned, checksummed datagrams (see docs/PROTOCOL.md).

Every datagram is HEADER + body + CRC32 of everything before it. Nothing is parsed
by delimiters; every length is explicit and checked against what arrived.
"""

import collections
import struct
import zlib

MAGIC = b"TMQ"
VERSION = 1

DATA = 1
ACK = 2
HELLO = 3

# Flag bit reserved for authenticated encryption keyed by the token (not yet used):
# when set, the body is nonce + ciphertext + tag. Version 1 peers drop such datagrams.
FLAG_SEALED = 0x01

HEADER = struct.Struct("!3sBBBHqq")  # magic, version, type, flags, listen port, src, dst
CRC = struct.Struct("!I")
DATA_HEAD = struct.Struct("!IIQQ")  # stream, sender boot id, packet number, base
FRAME = struct.Struct("!QIIH")  # seq, fragment index, fragment count, chunk length
ACK_HEAD = struct.Struct("!IQIH")  # stream, committed, receiver boot id, range count
RANGE = struct.Struct("!QQ")  # lowest, highest packet number received (inclusive)
HELLO_BODY = struct.Struct("!I")  # boot id

OVERHEAD = HEADER.size + CRC.size
DATA_OVERHEAD = OVERHEAD + DATA_HEAD.size
MAX_FRAGMENTS = 1 << 24

# Message (before fragmentation): kind, token kind, sent-ts length, token length.
MESSAGE_HEAD = struct.Struct("!BBHI")
KIND_NULL, KIND_INTEGER, KIND_REAL, KIND_TEXT, KIND_BLOB = range(5)
MAX_SENT_BYTES = 0xFFFF  # the sender's ts travels with a 16-bit length

Header = collections.namedtuple("Header", "type flags port src dst")
Data = collections.namedtuple("Data", "header stream boot pn base frames")
Frame = collections.namedtuple("Frame", "seq frag nfrags chunk")
Ack = collections.namedtuple("Ack", "header stream committed boot ranges")
Hello = collections.namedtuple("Hello", "header boot")
Message = collections.namedtuple("Message", "kind token sent data")


class BadDatagram(Exception):
    """A datagram that is not ours or not intact; str() is a short reason for counters."""


def _seal(header, body_parts):
    raw = b"".join([header, *body_parts])
    return raw + CRC.pack(zlib.crc32(raw))


def encode_data(port, src, dst, stream, boot, pn, base, frames):
    """frames: iterable of (seq, frag, nfrags, chunk bytes)."""
    parts = [DATA_HEAD.pack(stream, boot, pn, base)]
    for seq, frag, nfrags, chunk in frames:
        parts.append(FRAME.pack(seq, frag, nfrags, len(chunk)))
        parts.append(chunk)
    return _seal(HEADER.pack(MAGIC, VERSION, DATA, 0, port, src, dst), parts)


def encode_ack(port, src, dst, stream, committed, boot, ranges):
    """ranges: (low, high) packet numbers received, most recent first."""
    parts = [ACK_HEAD.pack(stream, committed, boot, len(ranges))]
    parts.extend(RANGE.pack(lo, hi) for lo, hi in ranges)
    return _seal(HEADER.pack(MAGIC, VERSION, ACK, 0, port, src, dst), parts)


def encode_hello(port, src, dst, boot):
    return _seal(HEADER.pack(MAGIC, VERSION, HELLO, 0, port, src, dst),
                 [HELLO_BODY.pack(boot)])


def decode(datagram):
    """Parse and verify one datagram; raise BadDatagram with a short reason."""
    if not isinstance(datagram, bytes):
        datagram = bytes(datagram)  # slices below must be immutable copies
    size = len(datagram)
    if size < OVERHEAD:
        raise BadDatagram("truncated")
    magic, version, kind, flags, port, src, dst = HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise BadDatagram("foreign")
    if version != VERSION:
        raise BadDatagram("unsupported version")
    body_end = size - CRC.size
    (crc,) = CRC.unpack_from(datagram, body_end)
    if zlib.crc32(memoryview(datagram)[:body_end]) != crc:
        raise BadDatagram("bad checksum")
    if flags:
        raise BadDatagram("sealed (encryption not supported)")
    header = Header(kind, flags, port, src, dst)
    if kind == DATA:
        return _decode_data(header, datagram, HEADER.size, body_end)
    if kind == ACK:
        return _decode_ack(header, datagram, HEADER.size, body_end)
    if kind == HELLO:
        if body_end - HEADER.size != HELLO_BODY.size:
            raise BadDatagram("malformed hello")
        return Hello(header, *HELLO_BODY.unpack_from(datagram, HEADER.size))
    raise BadDatagram("unknown type")


def _decode_data(header, datagram, pos, end):
    if end - pos < DATA_HEAD.size:
        raise BadDatagram("malformed data")
    stream, boot, pn, base = DATA_HEAD.unpack_from(datagram, pos)
    pos += DATA_HEAD.size
    frames = []
    while pos < end:
        if end - pos < FRAME.size:
            raise BadDatagram("malformed frame")
        seq, frag, nfrags, length = FRAME.unpack_from(datagram, pos)
        pos += FRAME.size
        if pos + length > end or not 0 <= frag < nfrags <= MAX_FRAGMENTS:
            raise BadDatagram("malformed frame")
        frames.append(Frame(seq, frag, nfrags, datagram[pos:pos + length]))
        pos += length
    if not frames:
        raise BadDatagram("empty data")
    return Data(header, stream, boot, pn, base, frames)


def _decode_ack(header, datagram, pos, end):
    if end - pos < ACK_HEAD.size:
        raise BadDatagram("malformed ack")
    stream, committed, boot, count = ACK_HEAD.unpack_from(datagram, pos)
    pos += ACK_HEAD.size
    if end - pos != count * RANGE.size:
        raise BadDatagram("malformed ack")
    ranges = [RANGE.unpack_from(datagram, pos + i * RANGE.size) for i in range(count)]
    if any(lo > hi for lo, hi in ranges):
        raise BadDatagram("malformed ack")
    return Ack(header, stream, committed, boot, ranges)


def encode_message(kind, token, sent, data):
    """One message before fragmentation. token: bytes or None; sent, data: bytes."""
    head = MESSAGE_HEAD.pack(kind, token is not None, len(sent),
                             len(token) if token is not None else 0)
    return b"".join((head, sent, token or b"", data))


def decode_message(blob):
    if len(blob) < MESSAGE_HEAD.size:
        raise BadDatagram("malformed message")
    kind, has_token, sent_len, token_len = MESSAGE_HEAD.unpack_from(blob)
    pos = MESSAGE_HEAD.size
    if kind > KIND_BLOB or has_token > 1 or pos + sent_len + token_len > len(blob):
        raise BadDatagram("malformed message")
    sent = bytes(blob[pos:pos + sent_len])
    pos += sent_len
    token = bytes(blob[pos:pos + token_len]) if has_token else None
    pos += token_len
    data = bytes(blob[pos:])
    if kind == KIND_NULL and data:
        raise BadDatagram("malformed message")
    return Message(kind, token, sent, data)


def chunk_size(max_datagram):
    """Largest fragment payload so that a one-frame datagram fits max_datagram."""
    return max_datagram - DATA_OVERHEAD - FRAME.size
