"""One sender's stream as the receiver holds it: the packet numbers received, messages
arriving in fragments, complete ones waiting for an earlier one, and its memory cost."""

from tinymqd.budget import MESSAGE_COST, PARTIAL_COST, STREAM_COST

MAX_ACK_RANGES = 32
KEEP_RANGES = 64


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

    __slots__ = ("nfrags", "total", "crc", "chunks", "size", "cost", "touched")

    def __init__(self, frame, now):
        self.nfrags, self.total, self.crc = frame.nfrags, frame.total, frame.crc
        self.chunks = {}  # fragment index -> chunk
        self.size = 0
        self.cost = PARTIAL_COST  # charged to the sender's budget
        self.touched = now

    def same_message(self, frame):
        return (self.nfrags, self.total, self.crc) == (frame.nfrags, frame.total, frame.crc)

    def join(self):
        return b"".join(self.chunks[i] for i in range(self.nfrags))


def message_cost(token, data, sent):
    """What a whole message waiting in memory (or for the disk) is charged: all it holds,
    a 64 KiB token and ts as much as its data."""
    # (on the receiving hot path: no generator)
    return (MESSAGE_COST + (len(token) if isinstance(token, (bytes, str)) else 0)
            + (len(data) if isinstance(data, (bytes, str)) else 0)
            + (len(sent) if isinstance(sent, (bytes, str)) else 0))


class InboundStream:
    __slots__ = ("sender", "sender_hex", "stream", "committed", "submitted", "partial", "ready",
                 "rows", "received", "peer_run", "addr", "local", "shost", "sport",
                 "source", "cost", "refused", "key", "active", "stored", "tag")

    def __init__(self, sender, stream, committed, source):
        self.sender = sender
        self.sender_hex = f"{sender:016x}"  # as mqin.sender shows it
        self.stream = stream
        self.committed = committed
        self.submitted = committed
        self.partial = {}  # seq -> Partial
        self.ready = {}  # seq -> (Message, cost), complete but waiting for an earlier one
        self.rows = []  # next in order, for the writer at the end of this burst
        self.received = RangeSet()
        self.peer_run = 0
        self.addr = None  # where the sender's datagrams come from: ACKs go there ...
        self.local = None  # ... from the address they arrived at
        self.shost = None
        self.sport = None
        self.source = source  # the address its memory is charged to
        self.cost = 0  # charged for it: itself, partial and ready messages, rows on the way
        self.refused = 0  # a sequence number we will not store (too large); 0: none
        self.key = None  # name of the key its datagrams are sealed with (None: unsealed)
        self.active = 0.0  # when a datagram last came
        self.stored = 0  # messages stored in this run
        self.tag = 0  # the sender's tag of this stream: our ACKs echo it

    def idle(self):
        """Nothing held and nothing on its way to the disk: it can be forgotten."""
        return (not self.partial and not self.ready and not self.rows
                and self.submitted == self.committed and self.cost <= STREAM_COST)
