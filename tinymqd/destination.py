"""Destinations as the scheduler sees them: the sending state of each stream, its
address, how much of its backlog to hold in memory, when it looks stuck, and which of a
destination's streams may send (the oldest with rows: streams go out one after another,
see numbering.py)."""

from tinymqd.addresses import Endpoint
from tinymqd.congestion import INITIAL_RTO_S
from tinymqd.outbound import OutMessage, OutStream
from tinymqd.steering import Deliveries

# How much of a destination's backlog is held in memory: enough for LOAD_WINDOWS
# windows, at least LOAD_MIN, at most MAX_LOADED messages and about LOAD_BYTES; at
# most LOAD_ROWS read at a time.
LOAD_WINDOWS = 16
LOAD_MIN = 64
MAX_LOADED = 32768
LOAD_BYTES = 8 * 1024 * 1024
LOAD_ROWS = 1000
# A first message held whole by the peer but not committed after this many RTTs (at
# least STALL_MIN_S, times the backoff) means the peer lost it: send everything again.
STALL_RTTS = 4
STALL_MIN_S = 1.0


class Destination:
    """The scheduler's record of one stream to a destination (host, port): its sending
    state, the destination's address (shared by the destination's streams), and the
    bookkeeping of rows and timers only the scheduler uses."""

    __slots__ = ("id", "stream", "endpoint", "open", "assigned", "timer_queued",
                 "stall_since", "error_shown", "deliveries")

    def __init__(self, stream_id, endpoint, next_seq, chunk, node, open_):
        self.id = stream_id
        self.stream = OutStream(stream_id, chunk, node)
        self.endpoint = endpoint
        self.open = open_  # rows are numbered into it in this run
        self.assigned = next_seq  # seqs below are numbered in mqout
        self.deliveries = Deliveries()
        self.timer_queued = None  # the deadline last put on the timer heap
        self.stall_since = None  # when the first message was first seen stalled
        self.error_shown = None  # last_error text currently written to its rows

    @property
    def name(self):
        return self.endpoint.name

    def rows_waiting(self):
        st = self.stream
        return bool(st.messages) or (st.load_from is not None and st.load_from < self.assigned)

    def delivered(self, now, count):
        self.deliveries.add(now, count)

    def delivered_since(self, when):
        return self.deliveries.since(when)

    def backing_off(self):
        """Waiting longer than one timeout between tries (the peer was silent)."""
        return self.stream.cc.backoff > 1.0 or self.stream.unreachable

    def _load_room(self):
        st = self.stream
        return min(MAX_LOADED, max(LOAD_MIN, LOAD_WINDOWS * int(st.cc.cwnd))) - len(st.messages)

    def may_load(self):
        st = self.stream
        return (st.load_from is not None and st.load_from < self.assigned
                and self._load_room() > 0 and st.loaded_bytes < LOAD_BYTES)

    def load(self, intake):
        """Read the next pending rows into memory, within the budget."""
        st = self.stream
        rows, st.load_from = intake.load(
            self.id, st.load_from, self.assigned, min(self._load_room(), LOAD_ROWS),
            LOAD_BYTES - st.loaded_bytes)
        for seq, x, blob in rows:
            st.add(OutMessage(seq, x, blob, st.chunk))

    def stalled_too_long(self, now):
        """The peer has held all of the first message for long without committing it."""
        st = self.stream
        if not st.stalled():
            self.stall_since = None
        elif self.stall_since is None:
            self.stall_since = now
        elif now - self.stall_since > max(
                STALL_MIN_S, STALL_RTTS * (st.cc.srtt or INITIAL_RTO_S)) * st.cc.backoff:
            self.stall_since = None
            return True
        return False


class Destinations(dict):
    """The scheduler's destinations by stream id; each (host, port) has its streams in
    the order they were opened, and only the first of them sends."""

    def __init__(self, chunk):
        super().__init__()
        self.chunk = chunk
        self.targets = {}  # (host, port) -> [Destination], oldest stream first

    def add(self, stream_id, host, port, next_seq, node, open_):
        if isinstance(host, bytes):
            host = host.decode("utf-8", "replace")
        queue = self.targets.setdefault((host, port), [])
        endpoint = queue[0].endpoint if queue else Endpoint(host, port)
        dest = self[stream_id] = Destination(stream_id, endpoint, next_seq, self.chunk,
                                             node, open_)
        queue.append(dest)
        return dest

    def learn(self, stream_id, intake):
        """A stream first seen in a new row (opened in this run)."""
        row = intake.destination_of(stream_id)
        if row is None:
            return None
        host, port, node = row
        dest = self.add(stream_id, host, port, 1, node, True)
        dest.stream.load_from = 1
        return dest

    def may_send(self, dest):
        """Only the oldest stream of a destination sends: rows go in the order of x."""
        return self.targets[(dest.endpoint.host, dest.endpoint.port)][0] is dest

    def retire_if_done(self, dest):
        """Forget a stream of an earlier run once nothing waits in it; returns the next
        stream of its destination when it is now that one's turn."""
        if dest.open or dest.rows_waiting():
            return None
        queue = self.targets[(dest.endpoint.host, dest.endpoint.port)]
        first = queue[0] is dest
        queue.remove(dest)
        del self[dest.id]
        if not queue:
            del self.targets[(dest.endpoint.host, dest.endpoint.port)]
            return None
        return queue[0] if first else None

    def of_target(self, dest):
        return self.targets[(dest.endpoint.host, dest.endpoint.port)]

    def matching(self, node, ip, port):
        """The destinations that are this peer: by node id, or by address and port."""
        for dest in self.values():
            peer_node, addr = dest.stream.peer_node, dest.endpoint.addr
            if (peer_node and peer_node == node) or (
                    addr is not None and addr[0] == ip and dest.endpoint.port == port):
                yield dest

    def figures(self):
        """For STATUS= (read from the main thread: a snapshot of the values)."""
        waiting = [d for d in list(self.values()) if d.stream.messages]
        return {
            "destinations": len(waiting),
            "unreachable": sum(1 for d in waiting
                               if d.stream.unreachable or d.endpoint.error),
            "in_memory": sum(len(d.stream.messages) for d in waiting),
        }
