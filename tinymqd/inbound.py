"""Receiving messages: reassembly, order, duplicate suppression, durable hand-off.

One InboundStream per (sending node, its stream). `submitted` is the next sequence
number to hand to the writer, `committed` the next one not yet durable: everything below
it is in mqin (or was cancelled by the sender, which says so through `base`). The
committed point is persisted in tinymq_rx in the same transaction as the mqin rows, so
duplicates are recognised across restarts, crashes and consumers deleting mqin rows.
Packet numbers are acknowledged on receipt (they steer the sender's window); only the
committed point lets the sender delete rows.
"""

import collections
import threading
import time

from tinymqd import protocol
from tinymqd.budget import FRAGMENT_COST, MESSAGE_COST, PARTIAL_COST, STREAM_COST, Budget
from tinymqd.constants import DEFAULT_MAX_MESSAGE_BYTES, MAX_TOKEN_BYTES, MIN_DATAGRAM_BYTES
from tinymqd.instream import InboundStream, Partial, RangeSet, message_cost
from tinymqd.transport import display_host
from tinymqd.writer import MAX_ROWS


BUFFER_LIMIT = 64 * 1024 * 1024  # bytes held for streams, early and partial messages
SOURCE_SLACK = 1024 * 1024  # one address may hold its largest message and this much
MAX_STREAMS = 10000  # streams held in memory (idle ones are forgotten first) ...
MAX_SOURCE_STREAMS = 256  # ... and per source address
PARTIAL_IDLE_S = 60.0  # a message no fragment came for in this long is dropped
STREAM_IDLE_S = 600.0  # an idle stream is forgotten after this long (tinymq_rx keeps it)
SWEEP_INTERVAL_S = 5.0
# A message carries, besides its data, a token, the sender's ts and a header.
MESSAGE_EXTRA = MAX_TOKEN_BYTES + protocol.MAX_SENT_BYTES + protocol.MESSAGE_HEAD.size

class Inbound:
    """Owned by the receiver thread; the writer thread calls back under `lock`."""

    def __init__(self, origin, writer, send, stored_upto, max_message=DEFAULT_MAX_MESSAGE_BYTES,
                 keys=None):
        self.origin = origin  # our node, run and datagram counter (protocol.Origin)
        self.keys = keys or {}  # name -> key: ACKs are sealed like the data they answer
        self.writer = writer
        self.send = send  # send(datagram, addr, local address or None)
        self.max_message = max_message
        # A message is at most max_message of data plus its token and header.
        self.message_limit = max_message + MESSAGE_EXTRA
        # One address may hold its largest message, in the smallest fragments a sender
        # makes (max_datagram 512), and a little more.
        fragments = -(-self.message_limit // protocol.chunk_size(MIN_DATAGRAM_BYTES))
        share = self.message_limit + fragments * FRAGMENT_COST + SOURCE_SLACK
        self.budget = Budget(max(BUFFER_LIMIT, 2 * share), share)
        self.lock = threading.Lock()
        self.streams = collections.OrderedDict()  # least recently heard from first
        self.streams_of = collections.Counter()  # source address -> streams held
        # stored_upto(sender, stream): how far tinymq_rx says that stream is stored (0:
        # never heard of); read when a stream comes (back) into memory.
        self.stored_upto = stored_upto
        self.dirty = set()
        self.committed_messages = 0
        self.refused_streams = 0  # new streams not taken: too many already
        self.next_sweep = 0.0

    def on_data(self, dgram, addr, local=None):
        """Take one DATA datagram that arrived at `local`, from a validated sender;
        returns False if a malformed message was found."""
        header = dgram.header
        now = time.monotonic()
        ok = True
        with self.lock:
            st = self._stream(header.node, dgram.stream, addr[0], now)
            if st is None:
                return True  # too many streams: not taken (not acknowledged) for now
            st.active = now
            if header.run != st.peer_run:
                # The sender restarted: its packet numbers start afresh.
                st.peer_run = header.run
                st.received = RangeSet()
            st.addr = addr
            st.local = local
            st.shost = display_host(addr[0])
            st.sport = header.port
            st.key = header.key
            st.tag = dgram.tag
            if dgram.base > st.submitted:
                self._skip_to(st, dgram.base)
            keep = True
            for frame in dgram.frames:
                result = self._take_frame(st, frame, now)
                if result is None:
                    keep = False  # dropped for lack of memory: do not claim receipt
                elif result is False:
                    ok = False
            if keep:
                st.received.add(dgram.pn)
            self._take_ready(st)
            self.dirty.add(st)
        return ok

    # -- memory ------------------------------------------------------------------------

    def _stream(self, node, stream, source, now):
        key = (node, stream)
        st = self.streams.get(key)
        if st is not None:
            self.streams.move_to_end(key)
            return st
        if (len(self.streams) >= MAX_STREAMS or self.streams_of[source] >= MAX_SOURCE_STREAMS
                or not self.budget.fits(source, STREAM_COST)) and not self._evict(source):
            self.refused_streams += 1
            return None
        st = self.streams[key] = InboundStream(node, stream, self.stored_upto(node, stream),
                                               source)
        self.streams_of[source] += 1
        self._charge(st, STREAM_COST)
        return st

    def _evict(self, source):
        """Forget the idle stream heard from longest ago (of this source first, when it
        is at its share); True if one was."""
        crowded = self.streams_of[source] >= MAX_SOURCE_STREAMS
        for st in self.streams.values():
            if st.idle() and st not in self.dirty and (not crowded or st.source == source):
                self._forget(st)
                return True
        return False

    def _forget(self, st):
        """Out of memory; what it stored is in tinymq_rx, where it is read again if the
        stream comes back (a stream that only skipped ahead is skipped again by its
        sender's base)."""
        del self.streams[(st.sender, st.stream)]
        self.streams_of[st.source] -= 1
        if not self.streams_of[st.source]:
            del self.streams_of[st.source]
        self._charge(st, -st.cost)

    def _charge(self, st, cost):
        st.cost += cost
        if cost >= 0:
            self.budget.charge(st.source, cost)
        else:
            self.budget.release(st.source, -cost)

    def sweep(self, now):
        """Drop partial messages no fragment came for in PARTIAL_IDLE_S (the sender sends
        them again) and streams idle for STREAM_IDLE_S."""
        with self.lock:
            for st in list(self.streams.values()):
                for seq in [s for s, p in st.partial.items()
                            if now - p.touched > PARTIAL_IDLE_S]:
                    self._charge(st, -st.partial.pop(seq).cost)
                if st.idle() and st not in self.dirty and now - st.active > STREAM_IDLE_S:
                    self._forget(st)

    # -- messages --------------------------------------------------------------------------

    def _skip_to(self, st, base):
        """The sender says everything below `base` is delivered or cancelled."""
        for seq in [s for s in st.partial if s < base]:
            self._charge(st, -st.partial.pop(seq).cost)
        for seq in [s for s in st.ready if s < base]:
            self._charge(st, -st.ready.pop(seq)[1])
        st.submitted = base
        st.committed = max(st.committed, base)
        if st.refused < base:
            st.refused = 0

    def _take_frame(self, st, frame, now):
        """True if stored or already known, None if no room, False if malformed."""
        seq = frame.seq
        if seq < st.submitted or seq in st.ready or seq == st.refused:
            return True  # a duplicate: the acknowledgement will repeat what we have
        if frame.total > self.message_limit:
            return self._refuse(st, seq)
        next_in_order = seq == st.submitted
        if frame.nfrags == 1:  # the common case: a whole message in one frame
            if not self.budget.fits(st.source, MESSAGE_COST + frame.total, next_in_order):
                return None
            return self._complete(st, seq, frame.chunk, frame.crc, 0)
        part = st.partial.get(seq)
        if part is not None and not part.same_message(frame):
            del st.partial[seq]  # another version of it: start again with that one
            self._charge(st, -part.cost)
            part = None
        if frame.frag in (part.chunks if part is not None else ()):
            return True
        cost = FRAGMENT_COST + len(frame.chunk) + (PARTIAL_COST if part is None else 0)
        if not self.budget.fits(st.source, cost, next_in_order):
            return None
        if part is None:
            part = st.partial[seq] = Partial(frame, now)
            self._charge(st, PARTIAL_COST)
        if part.size + len(frame.chunk) > part.total:
            del st.partial[seq]
            self._charge(st, -part.cost)
            return False  # more than the message's own length: not a real one
        part.chunks[frame.frag] = frame.chunk
        part.size += len(frame.chunk)
        part.touched = now
        part.cost += FRAGMENT_COST + len(frame.chunk)
        self._charge(st, FRAGMENT_COST + len(frame.chunk))
        if len(part.chunks) < part.nfrags:
            return True
        del st.partial[seq]
        return self._complete(st, seq, part.join(), part.crc, part.cost)

    def _complete(self, st, seq, blob, crc, charged):
        """A whole message arrived; keep it until all earlier ones are in. `charged`:
        what its fragments cost (released; the message is charged instead)."""
        self._charge(st, -charged)
        try:
            if protocol.message_crc(blob) != crc:
                raise protocol.BadDatagram("message checksum")
            message = protocol.decode_message(blob)
        except protocol.BadDatagram:
            return False  # counted and logged at a limited rate by the receiver
        if isinstance(message.data, bytes) and len(message.data) > self.max_message:
            return self._refuse(st, seq)
        cost = message_cost(message.token, message.data, message.sent)
        self._charge(st, cost)
        st.ready[seq] = (message, cost)
        return True

    def _refuse(self, st, seq):
        """A message larger than our max_message: the ACK says so, the sender takes it
        out of the stream (keeping the row, with last_error) and moves its base past it."""
        if not st.refused or seq < st.refused:
            st.refused = seq
        return True

    def _take_ready(self, st):
        """Move the messages that are next in order to the rows for the writer (they
        stay charged until they are on disk)."""
        rows = st.rows
        while st.submitted in st.ready:
            message, cost = st.ready.pop(st.submitted)
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
        cost = sum(message_cost(row[2], row[4], row[7]) for row in rows)

        def done():
            with self.lock:
                self._charge(st, -cost)  # on disk now
                self.committed_messages += len(rows)
                st.stored += len(rows)
                if upto > st.committed:
                    st.committed = upto
                self._send_ack(st)

        # The rows and the committed point, in one transaction.
        self.writer.submit(staged={"mqin": rows, "rx": [rx]}, done=done)

    def senders(self, now):
        """Per sending node and address heard from in this run: messages stored, seconds
        since it was last heard (for `tinymq status`)."""
        out = {}
        with self.lock:
            for st in self.streams.values():
                ident = (st.sender_hex, st.shost, st.sport)
                stored, heard = out.get(ident, (0, None))
                ago = now - st.active
                out[ident] = (stored + st.stored, ago if heard is None else min(heard, ago))
        return [{"node": node, "host": host, "port": port, "received": stored,
                 "last_heard_s": round(ago, 1)}
                for (node, host, port), (stored, ago) in sorted(out.items(), key=str)]

    def flush(self):
        """End of a burst: hand the rows to the writer, acknowledge what arrived."""
        with self.lock:
            for st in self.dirty:
                self._submit(st)
                self._send_ack(st)
            self.dirty.clear()
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_INTERVAL_S
            self.sweep(now)

    def _send_ack(self, st):
        if st.addr is None:
            return
        self.send(protocol.encode_ack(self.origin, st.peer_run, st.stream, st.committed,
                                      st.received.recent(), st.refused,
                                      self.max_message if st.refused else 0,
                                      self.keys.get(st.key), st.tag),
                  st.addr, st.local)
