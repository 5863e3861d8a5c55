"""Steering the sending side, on the scheduler's thread: held destinations (tinymq
hold/release), flush, a reloaded configuration, what a peer's acknowledgement asks of
our rows (refused messages, a stream numbered elsewhere), and the figures `tinymq
status` shows for each destination."""

import collections
import logging
import time

from tinymqd import store
from tinymqd.logsetup import fields
from tinymqd.outbound import UNREACHABLE_AFTER_S

log = logging.getLogger("tinymqd.scheduler")

RATE_WINDOW_S = 10.0  # the current rate is what was delivered in this long
HOLDS = "SELECT host, port FROM tinymq_holds"


class Steering:
    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.holds = frozenset()  # (host, port or None)

    # -- questions from the control socket -----------------------------------------------

    def on_request(self, request):
        """tinymq status, flush, hold/release: answered on this thread."""
        if request.what == "status":
            request.reply.set(self.status())
        elif request.what == "flush":
            request.reply.set(self.flush(request.host, request.port))
        elif request.what == "holds":
            request.reply.set(self.load_holds())

    # -- holds -----------------------------------------------------------------------

    def load_holds(self):
        """Read tinymq_holds; a destination no longer held is sent to at once."""
        sched = self.scheduler
        rows = sched.intake.db.execute(HOLDS).fetchall()
        holds = frozenset((store.as_text(host), port) for host, port in rows)
        if holds != self.holds:
            released = [d for d in sched.destinations.values() if self.held(d)]
            self.holds = holds
            for dest in released:
                if not self.held(dest):
                    log.info("destination %s released", dest.name,
                             extra=fields(peer=dest.name))
                    sched.dirty.add(dest)
        return len(holds)

    def held(self, dest):
        ep = dest.endpoint
        return (ep.host, None) in self.holds or (ep.host, ep.port) in self.holds

    # -- flush -----------------------------------------------------------------------------

    def flush(self, host=None, port=None):
        """Retry now the destinations that match (all when host is None), ending any
        backoff; names that did not resolve are looked up again at once."""
        sched = self.scheduler
        now = time.monotonic()
        woken = 0
        for dest in list(sched.destinations.values()):
            ep = dest.endpoint
            if host is not None and (ep.host != host or (port is not None and ep.port != port)):
                continue
            ep.next_resolve = 0.0
            if ep.addr is None:
                sched.addresses.need(dest)
            sched.wake(dest, now)
            woken += 1
        return woken

    # -- configuration -------------------------------------------------------------------

    def reconfigure(self, cfg, peer_keys):
        """Take a reloaded configuration: the retry cap, keys and peers apply from now on
        (each destination chooses its key again)."""
        sched = self.scheduler
        sched.cfg = cfg
        sched.peer_keys = peer_keys
        for dest in sched.destinations.values():
            if dest.endpoint.addr is not None:
                dest.endpoint.choose_keys(peer_keys)
            sched.dirty.add(dest)

    # -- what a peer's acknowledgement asks of our rows -----------------------------------

    def refused(self, dest):
        """The peer refused messages larger than its max_message: their rows stay, with
        last_error."""
        self.scheduler.intake.take_out([(f"{dest.name} refuses it: larger than its max_message "
                               f"({limit} bytes); shorten the data or raise max_message "
                               f"there, then UPDATE the row", x)
                              for x, limit in dest.stream.refused])
        log.warning("%s refused %d message(s) larger than its max_message; they stay in "
                    "mqout with last_error", dest.name, len(dest.stream.refused),
                    extra=fields(peer=dest.name, stream=dest.id))
        dest.stream.refused.clear()

    def numbered_elsewhere(self, dest):
        """The peer has stored numbers of this run's stream that we never gave out:
        another copy of this database uses the same stream (cloned while running). Our
        pending rows of it move to a new stream, so none is taken for another's."""
        log.warning("destination %s has messages of stream %016x that this node never "
                    "numbered (a clone of this database runs elsewhere?); moving the rows "
                    "waiting in it to a new stream", dest.name, dest.id,
                    extra=fields(peer=dest.name, stream=dest.id))
        dest.open = False
        dest.stream.cancel(list(dest.stream.messages))
        dest.stream.load_from = dest.assigned
        self.scheduler.intake.rehome(dest.id)
        self.scheduler.retire_if_done(dest)

    # -- figures ---------------------------------------------------------------------------

    def status(self):
        """Per destination (host, port): its state, what is in flight, RTT and rate."""
        sched = self.scheduler
        now = time.monotonic()
        out = []
        for queue in list(sched.destinations.targets.values()):
            if not queue:
                continue
            first = queue[0]
            st, ep = first.stream, first.endpoint
            out.append({
                "host": ep.host, "port": ep.port,
                "state": self._state(first, now),
                "in_flight": sum(len(d.stream.messages) for d in queue),
                "rtt_ms": None if st.cc.srtt is None else round(st.cc.srtt * 1000, 3),
                "rate_per_s": round(sum(d.delivered_since(now - RATE_WINDOW_S)
                                        for d in queue) / RATE_WINDOW_S, 1),
                "last_error": first.error_shown,
            })
        return out

    def _state(self, dest, now):
        st, ep = dest.stream, dest.endpoint
        if self.held(dest):
            return "held"
        if ep.addr is None and ep.error:
            return "unresolvable"
        if st.unreachable or st.silent_for(now) >= UNREACHABLE_AFTER_S:
            return "unreachable"
        if st.cc.backoff > 1.0:
            return "backing off"
        if st.messages or dest.rows_waiting():
            return "sending"
        return "idle"


class Deliveries:
    """How many messages one stream had committed when: for its current rate."""

    def __init__(self):
        self._recent = collections.deque()  # (monotonic time, messages)

    def add(self, now, count):
        self._recent.append((now, count))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def since(self, when):
        return sum(count for t, count in self._recent if t >= when)

