"""The UDP receiver thread: reads datagrams, drops bad ones, dispatches the rest.

DATA goes to the inbound side (reassembly, order, durable hand-off); ACK and HELLO go
to the scheduler's inbox. Acknowledgements are sent once per burst of datagrams.
"""

import logging
import select
import time

from tinymqd import __version__, events, protocol, transport
from tinymqd.logsetup import fields
from tinymqd.ratelimit import CountingLog
from tinymqd.transport import format_endpoint
from tinymqd.worker import Worker

log = logging.getLogger("tinymqd.receiver")

MAX_BURST = 256  # datagrams read before the rows go to the writer and ACKs go out
RECV_SIZE = 65536
POLL_TIMEOUT_MS = 250  # wake up this often to show signs of life (the watchdog)
HEARD_INTERVAL_S = 0.5  # tell the scheduler a peer is alive at most this often
OLD_VERSION_LOG_S = 3600.0  # say at most this often that a peer must be upgraded
MAX_REMEMBERED = 10000  # addresses remembered for the intervals above


class Receiver(Worker):
    name = "receiver"
    nice = 5  # yields the CPU to the writer (see Worker._set_priority)

    def __init__(self, stopping, sock, origin, sender, gate, inbound, scheduler_inbox):
        super().__init__(stopping)
        self.sock = sock
        self.origin = origin
        self.sender = sender
        self.gate = gate
        self.inbound = inbound
        self.inbox = scheduler_inbox
        self.dropped = CountingLog(log, "bad datagrams")
        self._heard = {}

    def loop(self):
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        sock = self.sock
        while not self.stopping.is_set():
            self.beat()
            if not poller.poll(POLL_TIMEOUT_MS):
                self.dropped.flush()
                continue
            for _ in range(MAX_BURST):
                try:
                    datagram, addr, local = transport.receive(sock, RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    # e.g. ICMP errors reported on the socket; never fatal.
                    log.debug("receive error: %s", e)
                    continue
                try:
                    self.handle(datagram, addr, local)
                except Exception as e:  # noqa: BLE001 - one datagram never ends the thread
                    self.dropped.count(f"failed to handle ({type(e).__name__}: {e})",
                                       _where(addr))
            self.inbound.flush()

    def handle(self, datagram, addr, local=None):
        try:
            message = self.gate.open(datagram, addr)
        except protocol.BadDatagram as e:
            reason = str(e)
            if reason == "older version":
                self._older_version(addr)
            self.dropped.count(reason, _where(addr))
            return
        kind = message.header.type
        if kind == protocol.DATA:
            self._on_data(message, addr, local)
        elif kind == protocol.ACK:
            if message.header.peer_run != self.origin.run:
                self.dropped.count("ack for another run", _where(addr))
                return
            self.inbox.put(events.AckArrived(message, addr))
        elif kind == protocol.HELLO:
            self.inbox.put(events.HelloArrived(message, addr))

    def _on_data(self, data, addr, local):
        header = data.header
        if header.run == self.origin.run and data.dst != self.origin.node:
            # Our own DATA for another node, sent back to us (a reflection); a daemon
            # sending to itself names itself as the destination.
            self.dropped.count("reflected", _where(addr))
            return
        if not self.gate.allowed(addr):
            self.dropped.count("not in allow", _where(addr))
            return
        if data.dst not in (0, self.origin.node) or not self.gate.validated(data, addr):
            # A sender that does not know us yet (or since our restart): it learns our
            # node, run and its cookie from a HELLO, and sends again.
            self.gate.introduce(data, addr, local, self.sender.send)
            return
        if not self.inbound.on_data(data, addr, local):
            self.dropped.count("malformed message", _where(addr))
        self._note_heard(header, addr)

    def _older_version(self, addr):
        if self._remember(("version", addr[0]), time.monotonic(), OLD_VERSION_LOG_S):
            log.warning("%s speaks an older tinymq protocol and must be upgraded to tinymqd "
                        "%s; rows to it wait until then", _where(addr), __version__,
                        extra=fields(peer=_where(addr)))

    def _note_heard(self, header, addr):
        now = time.monotonic()
        if self._remember((addr[0], header.port), now, HEARD_INTERVAL_S):
            self.inbox.put(events.PeerHeard(header.node, addr[0], header.port))

    def _remember(self, key, now, interval):
        """True (and remember now) if `key` was not seen within `interval` seconds."""
        if self._heard.get(key, 0.0) + interval >= now:
            return False
        if len(self._heard) > MAX_REMEMBERED:
            self._heard.clear()
        self._heard[key] = now
        return True


def _where(addr):
    return format_endpoint(addr[0], addr[1])
