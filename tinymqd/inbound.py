"""Receiving messages: reassembly, order, duplicate suppression, durable hand-off.

One InboundStream per (sending node, its stream). `submitted` is the next sequence
number to hand to the writer, `committed` the next one not yet durable: everything below
it is in mqin (or was cancelled by the sender, which says so through `base`). The
committed point is persisted in tinymq_rx in the same transaction as the mqin rows, so
duplicates are recognised across restarts, crashes and consumers deleting mqin rows.
Packet numbers are acknowledged on receipt (they steer the sender's window); only the
committed point lets the sender delete rows.
"""

import threading

from tinymqd import protocol
from tinymqd.constants import DEFAULT_MAX_MESSAGE_BYTES, MAX_TOKEN_BYTES
from tinymqd.transport import display_host
from tinymqd.writer import MAX_ROWS


MAX_ACK_RANGES = 32
KEEP_RANGES = 64
BUFFER_LIMIT = 64 * 1024 * 1024  # bytes held for out-of-order and partial messages
# A message carries, besides its data, a token, the sender's ts and a header.
MESSAGE_EXTRA = MAX_TOKEN_BYTES + protocol.MAX_SENT_BYTES + protocol.MESSAGE_HEAD.size

class RangeSet:
    """Packet numbers received, as inclusive ranges, most recent first (bounded)."""

    __slots__ = ("ranges",)

    def __init__(self):
        self.ranges = []

    def add(self, pn):
        ranges = self.ranges
        if ranges:
            lo, hi = ranges[0]
            if pn == hi + 1:
                ranges[0] = (lo, pn)
                return
            if lo <= pn <= hi:
                return
        for i, (lo, hi) in enumerate(ranges):
            if lo <= pn <= hi:
                return
            if pn > hi:
                ranges.insert(i, (pn, pn))
                break
        else:
            ranges.append((pn, pn))
        self._merge()
        del self.ranges[KEEP_RANGES:]

    def _merge(self):
        merged = []
        for lo, hi in self.ranges:
            if merged and merged[-1][0] <= hi + 1:
                merged[-1] = (min(lo, merged[-1][0]), merged[-1][1])
            else:
                merged.append((lo, hi))
        self.ranges = merged

    def recent(self):
        return self.ranges[:MAX_ACK_RANGES]


class Partial:
    """Fragments of one message as they arrive (memory follows what arrived, not what
    a datagram claims is coming). Every fragment names the message it belongs to by its
    fragment count, length and CRC-32: a fragment of another version of the message (the
    row was updated, the sender restarted) never mixes with these."""

    __slots__ = ("nfrags", "total", "crc", "chunks", "size")

    def __init__(self, frame):
        self.nfrags, self.total, self.crc = frame.nfrags, frame.total, frame.crc
        self.chunks = {}  # fragment index -> chunk
        self.size = 0

    def same_message(self, frame):
        return (self.nfrags, self.total, self.crc) == (frame.nfrags, frame.total, frame.crc)

    def join(self):
        return b"".join(self.chunks[i] for i in range(self.nfrags))


def _data_size(message):
    return len(message.data) if isinstance(message.data, bytes) else 8


class InboundStream:
    __slots__ = ("sender", "sender_hex", "stream", "committed", "submitted", "partial", "ready",
                 "rows", "received", "peer_run", "addr", "local", "shost", "sport",
                 "buffered", "refused", "key")

    def __init__(self, sender, stream, committed):
        self.sender = sender
        self.sender_hex = f"{sender:016x}"  # as mqin.sender shows it
        self.stream = stream
        self.committed = committed
        self.submitted = committed
        self.partial = {}  # seq -> Partial
        self.ready = {}  # seq -> Message, complete but waiting for an earlier one
        self.rows = []  # next in order, for the writer at the end of this burst
        self.received = RangeSet()
        self.peer_run = 0
        self.addr = None  # where the sender's datagrams come from: ACKs go there ...
        self.local = None  # ... from the address they arrived at
        self.shost = None
        self.sport = None
        self.buffered = 0
        self.refused = 0  # a sequence number we will not store (too large); 0: none
        self.key = None  # name of the key its datagrams are sealed with (None: unsealed)


class Inbound:
    """Owned by the receiver thread; the writer thread calls back under `lock`."""

    def __init__(self, origin, writer, send, known, max_message=DEFAULT_MAX_MESSAGE_BYTES,
                 keys=None):
        self.origin = origin  # our node, run and datagram counter (protocol.Origin)
        self.keys = keys or {}  # name -> key: ACKs are sealed like the data they answer
        self.writer = writer
        self.send = send  # send(datagram, addr, local address or None)
        self.max_message = max_message
        # A message is at most max_message of data plus its token and header.
        self.message_limit = max_message + MESSAGE_EXTRA
        self.buffer_limit = max(BUFFER_LIMIT, 2 * self.message_limit)
        self.lock = threading.Lock()
        self.streams = {}
        self.known = known  # (sender, stream) -> committed, from tinymq_rx
        self.dirty = set()
        self.buffered = 0
        self.committed_messages = 0

    def on_data(self, dgram, addr, local=None):
        """Take one DATA datagram that arrived at `local`; returns False if a malformed
        message was found."""
        header = dgram.header
        key = (header.node, dgram.stream)
        ok = True
        with self.lock:
            st = self.streams.get(key)
            if st is None:
                st = InboundStream(header.node, dgram.stream, self.known.pop(key, 0))
                self.streams[key] = st
            if header.run != st.peer_run:
                # The sender restarted: its packet numbers start afresh.
                st.peer_run = header.run
                st.received = RangeSet()
            st.addr = addr
            st.local = local
            st.shost = display_host(addr[0])
            st.sport = header.port
            st.key = header.key
            if dgram.base > st.submitted:
                self._skip_to(st, dgram.base)
            keep = True
            for frame in dgram.frames:
                result = self._take_frame(st, frame)
                if result is None:
                    keep = False  # dropped for lack of buffer: do not claim receipt
                elif result is False:
                    ok = False
            if keep:
                st.received.add(dgram.pn)
            self._take_ready(st)
            self.dirty.add(st)
        return ok

    def _skip_to(self, st, base):
        """The sender says everything below `base` is delivered or cancelled."""
        for seq in [s for s in st.partial if s < base]:
            self._unbuffer(st, st.partial.pop(seq).size)
        for seq in [s for s in st.ready if s < base]:
            self._unbuffer(st, _data_size(st.ready.pop(seq)))
        st.submitted = base
        st.committed = max(st.committed, base)
        if st.refused < base:
            st.refused = 0

    def _unbuffer(self, st, size):
        st.buffered -= size
        self.buffered -= size

    def _take_frame(self, st, frame):
        """True if stored or already known, None if no room, False if malformed."""
        seq = frame.seq
        if seq < st.submitted or seq in st.ready or seq == st.refused:
            return True  # a duplicate: the acknowledgement will repeat what we have
        if frame.total > self.message_limit:
            return self._refuse(st, seq)
        # Early messages wait in memory, within a budget; the next one in order is
        # always taken (else a full buffer could wait for it for ever).
        room = self.buffered <= self.buffer_limit or seq == st.submitted
        if frame.nfrags == 1:  # the common case: a whole message in one frame
            return self._complete(st, seq, frame.chunk, frame.crc, 0) if room else None
        part = st.partial.get(seq)
        if part is not None and not part.same_message(frame):
            del st.partial[seq]  # another version of it: start again with that one
            self._unbuffer(st, part.size)
            part = None
        if part is None:
            if not room:
                return None
            part = st.partial[seq] = Partial(frame)
        if frame.frag in part.chunks:
            return True
        size = len(frame.chunk)
        if part.size + size > part.total:
            del st.partial[seq]
            self._unbuffer(st, part.size)
            return False  # more than the message's own length: not a real one
        part.chunks[frame.frag] = frame.chunk
        part.size += size
        st.buffered += size
        self.buffered += size
        if len(part.chunks) < part.nfrags:
            return True
        del st.partial[seq]
        return self._complete(st, seq, part.join(), part.crc, part.size)

    def _complete(self, st, seq, blob, crc, buffered):
        """A whole message arrived; keep it until all earlier ones are in."""
        try:
            if protocol.message_crc(blob) != crc:
                raise protocol.BadDatagram("message checksum")
            message = protocol.decode_message(blob)
        except protocol.BadDatagram:
            self._unbuffer(st, buffered)
            return False  # counted and logged at a limited rate by the receiver
        if isinstance(message.data, bytes) and len(message.data) > self.max_message:
            self._unbuffer(st, buffered)
            return self._refuse(st, seq)
        size = _data_size(message)
        st.buffered += size - buffered
        self.buffered += size - buffered
        st.ready[seq] = message
        return True

    def _refuse(self, st, seq):
        """A message larger than our max_message: the ACK says so, the sender takes it
        out of the stream (keeping the row, with last_error) and moves its base past it."""
        if not st.refused or seq < st.refused:
            st.refused = seq
        return True

    def _take_ready(self, st):
        """Move the messages that are next in order to the rows for the writer."""
        rows = st.rows
        while st.submitted in st.ready:
            message = st.ready.pop(st.submitted)
            self._unbuffer(st, _data_size(message))
            rows.append((st.shost, st.sport, message.token, message.kind, message.data,
                         st.sender_hex, st.submitted, message.sent, st.key))
            st.submitted += 1

    def _submit(self, st):
        """Writer operations of at most writer.MAX_ROWS rows per stream and burst of
        datagrams (short transactions), each with its stream's committed point."""
        rows, st.rows = st.rows, []
        first = st.submitted - len(rows)
        for start in range(0, len(rows), MAX_ROWS):
            chunk = rows[start:start + MAX_ROWS]
            self._submit_rows(st, chunk, first + start + len(chunk))

    def _submit_rows(self, st, rows, upto):
        rx = (st.sender, st.stream, upto, st.shost, st.sport)

        def done():
            with self.lock:
                self.committed_messages += len(rows)
                if upto > st.committed:
                    st.committed = upto
                self._send_ack(st)

        # The rows and the committed point, in one transaction.
        self.writer.submit(staged={"mqin": rows, "rx": [rx]}, done=done)

    def flush(self):
        """End of a burst: hand the rows to the writer, acknowledge what arrived."""
        with self.lock:
            for st in self.dirty:
                self._submit(st)
                self._send_ack(st)
            self.dirty.clear()

    def _send_ack(self, st):
        if st.addr is None:
            return
        self.send(protocol.encode_ack(self.origin, st.peer_run, st.stream, st.committed,
                                      st.received.recent(), st.refused,
                                      self.max_message if st.refused else 0,
                                      self.keys.get(st.key)),
                  st.addr, st.local)
