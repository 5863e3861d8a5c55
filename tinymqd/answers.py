"""What peers tell us about our streams, on the scheduler's thread: acknowledgements
(rows committed, refused, or numbered elsewhere), HELLOs (a peer's node, run and our
cookie; a restart or a replaced database) and signs of life from peers that send to us."""

import logging
import time

from tinymqd.logsetup import fields

log = logging.getLogger("tinymqd.scheduler")


class Answers:
    def __init__(self, scheduler):
        self.scheduler = scheduler

    def on_ack(self, event):
        """An acknowledgement of one of our streams: it names the stream (a random id)
        and echoes our run, which only the peer we send to has seen; where it came from
        does not matter (a peer may answer from another of its addresses)."""
        sched = self.scheduler
        ack = event.ack
        dest = sched.destinations.get(ack.stream)
        if dest is None or ack.tag != dest.stream.tag or not \
                dest.endpoint.answers_with_right_key(ack.header.key):
            return
        if ack.committed > dest.assigned and dest.open:
            sched.steering.numbered_elsewhere(dest)
            return
        st = dest.stream
        dest.endpoint.heard_run(ack.header.run)
        was_unreachable, held = st.unreachable, len(st.messages)
        committed = st.on_ack(ack, time.monotonic())
        if was_unreachable:
            sched.addresses.back(dest)
        if st.refused:
            sched.steering.refused(dest)
        if committed is not None:
            dest.delivered(time.monotonic(), held - len(st.messages))
            # Coalesced in the writer: one DELETE per stream and transaction.
            sched.writer.submit(staged={"delete": [(dest.id, committed)]})
        sched.queue_timer(dest)
        sched.dirty.add(dest)

    def on_hello(self, event):
        """The destination tells us its node, run and our cookie: it restarted, or our
        DATA did not echo its run or cookie, or it is another node than we believed. It
        names one of our streams (so it has seen our traffic) and echoes our run, unless
        it announces its start (then its run must be one we have not seen before: an old
        HELLO replayed changes nothing)."""
        sched = self.scheduler
        hello = event.hello
        header = hello.header
        dest = sched.destinations.get(hello.stream)
        if dest is None or not dest.endpoint.take_hello(hello, sched.origin.run,
                                                        dest.stream.tag):
            return
        now, node, ep = time.monotonic(), header.node, dest.endpoint
        if ep.other_host(node, event.addr[0]):
            if ep.not_taken != (node, event.addr[0]):
                ep.not_taken = (node, event.addr[0])
                log.warning("destination %s answers at %s as node %016x, not as the node it "
                            "has been (%016x at %s): two hosts behind one name? Its rows "
                            "wait for the first; if that one's database was replaced, "
                            "restart tinymqd", ep.name, event.addr[0], node, *ep.heard,
                            extra=fields(peer=ep.name))
            if ep.addr[0] == event.addr[0] and sched.addresses.try_next(dest):
                sched.address_set(dest)
            return
        ep.heard = (node, event.addr[0])
        for each in sched.destinations.of_target(dest):
            was = each.stream.peer_node
            if each.stream.on_hello(node, header.run) == "replaced":
                log.warning("destination %s is another node now (%016x, was %016x; its "
                            "database replaced?): resending what it had not committed",
                            each.name, node, was, extra=fields(peer=each.name, stream=each.id))
            sched.wake(each, now)

    def on_heard(self, event):
        """A peer sent us data: it is alive, so a destination backing off retries now."""
        sched = self.scheduler
        now = time.monotonic()
        for dest in sched.destinations.matching(event.node, event.ip, event.port):
            if dest.backing_off():
                sched.wake(dest, now)
