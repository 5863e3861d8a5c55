"""Sending one stream: packets, acknowledgements, loss detection, what the peer holds.

An OutStream holds the lowest pending messages of one stream (the rows numbered for one
destination), sends their fragments in numbered packets, and learns from
acknowledgements:
- packet numbers acknowledged: fragments the peer holds (frees the window, RTT samples);
- the committed point: messages the peer stored durably; only these leave mqout.
Packet numbers are never reused, so every RTT sample is unambiguous (no Karn problem).
How fast it may send is congestion.py's business.
"""

import collections
import secrets

from tinymqd import protocol
from tinymqd.congestion import Congestion

REORDER_PACKETS = 3  # a packet this far below the largest acknowledged is lost
UNREACHABLE_AFTER_S = 2.5  # without any answer while data waits


class OutMessage:
    __slots__ = ("seq", "x", "blob", "crc", "nfrags", "next_frag", "acked", "nacked", "done")

    def __init__(self, seq, x, blob, chunk):
        self.seq = seq
        self.x = x
        self.blob = blob
        self.crc = protocol.message_crc(blob)  # names this version of the message
        self.nfrags = max(1, -(-len(blob) // chunk))
        self.next_frag = 0  # first fragment never sent yet
        self.acked = bytearray(self.nfrags)
        self.nacked = 0
        self.done = False  # committed by the peer or cancelled here

    def reset(self):
        """The peer lost what it held (it restarted): send everything again."""
        self.next_frag = 0
        self.acked = bytearray(self.nfrags)
        self.nacked = 0


class OutStream:
    """The sending state of one stream: window, timers and what the peer is; used only
    by the scheduler thread, which keeps its own bookkeeping in scheduler.Destination."""

    def __init__(self, stream_id, chunk, node=None):
        self.id = stream_id
        # Random per stream and run: only a peer that sees our DATA knows it, and its
        # ACKs and HELLOs must echo it (with the stream id: 127 secret bits).
        self.tag = secrets.randbits(64)
        self.node = node  # the node id this stream was numbered by (None: ours)
        self.chunk = chunk
        self.load_from = None  # next seq to read from mqout; None: find the lowest
        self.committed = 0  # the peer's committed point
        self.messages = collections.OrderedDict()  # seq -> OutMessage, ascending
        self.unsent = collections.deque()  # messages with fragments never sent
        self.retx = collections.deque()  # (message, fragment) to send again
        self.loaded_bytes = 0
        # packets and timers
        self.sent = collections.OrderedDict()  # pn -> (time, frames)
        self.next_pn = 1
        self.largest_acked = 0
        self.cc = Congestion()
        self.timer = None  # when the oldest outstanding packet counts as lost
        # the peer: its node id and run id (0: not known yet)
        self.peer_node = 0
        self.peer_run = 0
        self.refused = []  # (x, the peer's max_message) of messages the peer refused
        self.last_heard = None
        self.waiting_since = None  # first send without an answer since
        self.unreachable = False

    @property
    def base(self):
        for message in self.messages.values():
            return message.seq
        return self.load_from or 0

    def has_work(self):
        return bool(self.retx or self.unsent)

    def can_send(self):
        """Something waits to be sent and the window has room for a packet."""
        return len(self.sent) < self.cc.cwnd and bool(self.retx or self.unsent)

    def add(self, message):
        self.messages[message.seq] = message
        self.unsent.append(message)
        self.loaded_bytes += len(message.blob)

    def _drop(self, message):
        message.done = True
        self.loaded_bytes -= len(message.blob)

    def cancel(self, seqs):
        for seq in seqs:
            message = self.messages.pop(seq, None)
            if message is not None:
                self._drop(message)

    def build_packet(self, max_datagram, origin, cookie=0, key=None):
        """The next DATA datagram to send, or None. Records it as outstanding."""
        frames = []
        room = max_datagram - protocol.DATA_OVERHEAD - protocol.SEAL_EXTRA
        while True:
            picked = self._peek()
            if picked is None:
                break
            message, frag, from_retx = picked
            start = frag * self.chunk
            chunk = message.blob[start:start + self.chunk]
            need = protocol.FRAME.size + len(chunk)
            if need > room:
                break
            room -= need
            frames.append((message, frag, chunk))
            if from_retx:
                self.retx.popleft()
            else:
                message.next_frag += 1
                if message.next_frag >= message.nfrags:
                    self.unsent.popleft()
        if not frames:
            return None
        pn = self.next_pn
        self.next_pn += 1
        datagram = protocol.encode_data(
            origin, self.node, self.peer_run, self.id, pn, self.peer_node, cookie,
            self.base, [(m.seq, f, m.nfrags, len(m.blob), m.crc, c) for m, f, c in frames],
            key, self.tag)
        return pn, datagram, [(m, f) for m, f, _ in frames]

    def _peek(self):
        retx = self.retx
        while retx:
            message, frag = retx[0]
            if message.done or message.acked[frag]:
                retx.popleft()
                continue
            return message, frag, True
        unsent = self.unsent
        while unsent:
            message = unsent[0]
            if message.done:
                unsent.popleft()
                continue
            return message, message.next_frag, False
        return None

    def may_send_at(self, now):
        return self.cc.may_send_at(now)

    def record_sent(self, pn, frames, now):
        self.cc.on_sent(now)
        self.sent[pn] = (now, frames)
        if self.timer is None:
            self.timer = now + self.cc.jittered_rto()
        if self.waiting_since is None:
            self.waiting_since = now

    def on_ack(self, ack, now):
        """Apply an acknowledgement; returns the new committed point if it advanced.
        The peer answers: it is not unreachable (any more)."""
        self.last_heard = now
        self.waiting_since = None
        self.unreachable = False
        self.peer_node = ack.header.node
        if self.peer_run and ack.header.run != self.peer_run:
            self.peer_restarted()
        self.peer_run = ack.header.run
        newly = 0
        sent = self.sent
        latest = None
        for lo, hi in ack.ranges:
            if not sent:
                break
            # Ranges repeat what was acknowledged before: start at the oldest packet
            # still outstanding, so the work is proportional to what is new.
            lo = max(lo, next(iter(sent)))
            hi = min(hi, self.next_pn - 1)
            for pn in range(lo, hi + 1):
                record = sent.pop(pn, None)
                if record is None:
                    continue
                when, frames = record
                newly += 1
                for message, frag in frames:
                    if not message.acked[frag]:
                        message.acked[frag] = 1
                        message.nacked += 1
                if pn > self.largest_acked:
                    self.largest_acked = pn
                    latest = now - when
        if latest is not None:
            self.cc.rtt_sample(latest)
        lost = self._detect_losses(now)
        self.cc.on_acked(newly, lost, self.largest_acked, self.next_pn)
        if ack.refused:
            self._refuse(ack.refused, ack.limit)
        released = None
        if ack.committed > self.committed:
            self.committed = released = ack.committed
            self._release_committed()
        # Also wait for the commit of what the peer holds: that acknowledgement may be lost.
        self.timer = (now + self.cc.current_rto()) if sent or self.messages else None
        return released

    def _refuse(self, seq, limit):
        """The peer will not store this message (larger than its max_message): it leaves
        the stream (the peer skips it, as after a cancel) and the scheduler marks its row."""
        message = self.messages.pop(seq, None)
        if message is not None:
            self._drop(message)
            self.refused.append((message.x, limit))

    def _release_committed(self):
        messages = self.messages
        while messages:
            seq, message = next(iter(messages.items()))
            if seq >= self.committed:
                break
            del messages[seq]
            self._drop(message)
        if self.load_from is not None and self.load_from < self.committed:
            self.load_from = self.committed

    def _detect_losses(self, now):
        """Requeue the packets an acknowledgement shows lost; returns how many."""
        sent = self.sent
        if not sent:
            return 0
        threshold = self.cc.loss_delay()
        lost = []
        for pn, (when, _) in sent.items():
            if pn >= self.largest_acked:
                break
            if pn <= self.largest_acked - REORDER_PACKETS or when <= now - threshold:
                lost.append(pn)
        for pn in lost:
            self._requeue(sent.pop(pn)[1])
        return len(lost)

    def _requeue(self, frames):
        for message, frag in frames:
            if not message.done and not message.acked[frag]:
                self.retx.append((message, frag))

    def on_timeout(self, now, retry_max):
        """No acknowledgement in time: everything outstanding is lost; back off.
        Returns True when the destination has just become unreachable."""
        # Heard from within the last interval: the peer is alive and the path lossy, so
        # retry at the same pace; silent: back off exponentially, down to one probe.
        silent = self.last_heard is None or now - self.last_heard > self.cc.current_rto()
        lost = len(self.sent)
        if lost:
            for _, frames in self.sent.values():
                self._requeue(frames)
            self.sent.clear()
        else:
            self._probe_commit()
        self.cc.on_timeout(lost, silent, retry_max)
        self.timer = None
        became_unreachable = (not self.unreachable and self.waiting_since is not None
                              and now - self.waiting_since >= UNREACHABLE_AFTER_S)
        if became_unreachable:
            self.unreachable = True
        return became_unreachable

    def _probe_commit(self):
        """Everything was received but the commit was not confirmed: send the first
        fragment of the oldest message again; the answer carries the committed point."""
        for message in self.messages.values():
            if message.acked[0]:
                message.acked[0] = 0
                message.nacked -= 1
            self.retx.appendleft((message, 0))
            return

    def expect_peer(self, node):
        """The destination is known to be this node (we are sending to ourselves)."""
        self.peer_node = node

    def on_hello(self, node, run):
        """A HELLO from the destination. Returns "replaced" when it is another node than
        we knew (its database was replaced: what it held is gone), "restarted" for a new
        run of the same node, else None."""
        if self.peer_node and self.peer_node != node:
            self.peer_node, self.peer_run = node, run
            self.peer_restarted()
            return "replaced"
        if self.peer_run and self.peer_run != run:
            self.peer_run = run
            self.peer_restarted()
            return "restarted"
        self.peer_node, self.peer_run = node, run
        return None

    def peer_restarted(self):
        """The peer's memory is gone: resend everything not yet committed."""
        self.sent.clear()
        self.retx.clear()
        self.unsent.clear()
        for message in self.messages.values():
            message.reset()
            self.unsent.append(message)
        self.timer = None

    def wake(self, now):
        """The peer is alive again (it spoke to us): retry now, not after the backoff."""
        self.cc.wake()
        if self.sent:
            self.timer = now

    def silent_for(self, now):
        """Seconds since data went out without any answer since (0: answered)."""
        return 0.0 if self.waiting_since is None else now - self.waiting_since

    def stalled(self):
        """All fragments of the first message are held by the peer, yet not committed."""
        for message in self.messages.values():
            return message.nacked == message.nfrags and not self.sent
        return False
