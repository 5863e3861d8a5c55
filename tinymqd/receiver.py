"""The UDP receiver thread: reads datagrams, drops bad ones, dispatches the rest.

DATA goes to the inbound side (reassembly, order, durable hand-off); ACK and HELLO go
to the scheduler's inbox. Acknowledgements are sent once per burst of datagrams.
"""

import logging
import select
import time

from tinymqd import events, protocol
from tinymqd.ratelimit import CountingLog
from tinymqd.transport import format_endpoint
from tinymqd.worker import Worker

log = logging.getLogger("tinymqd.receiver")

MAX_BURST = 256  # datagrams read before the rows go to the writer and ACKs go out
RECV_SIZE = 65536
POLL_TIMEOUT_MS = 250  # wake up this often to show signs of life (the watchdog)
HEARD_INTERVAL_S = 0.5  # tell the scheduler a peer is alive at most this often
HELLO_INTERVAL_S = 1.0  # introduce ourselves to one address at most this often
MAX_REMEMBERED = 10000  # addresses remembered for the two intervals above


class Receiver(Worker):
    name = "receiver"
    nice = 5  # yields the CPU to the writer (see Worker._set_priority)

    def __init__(self, stopping, sock, node, inbound, scheduler_inbox):
        super().__init__(stopping)
        self.sock = sock
        self.node = node
        self.inbound = inbound
        self.inbox = scheduler_inbox
        self.dropped = CountingLog(log, "bad datagrams")
        self._heard = {}

    def loop(self):
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        recv = self.sock.recvfrom
        while not self.stopping.is_set():
            self.beat()
            if not poller.poll(POLL_TIMEOUT_MS):
                self.dropped.flush()
                continue
            for _ in range(MAX_BURST):
                try:
                    datagram, addr = recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    # e.g. ICMP errors reported on the socket; never fatal.
                    log.debug("receive error: %s", e)
                    continue
                self.handle(datagram, addr)
            self.inbound.flush()

    def handle(self, datagram, addr):
        try:
            message = protocol.decode(datagram)
        except protocol.BadDatagram as e:
            self.dropped.count(str(e), _where(addr))
            return
        except Exception:  # noqa: BLE001 - hostile input must never stop the thread
            log.exception("decoder failed on a %d-byte datagram from %s",
                          len(datagram), _where(addr))
            self.dropped.count("decoder failure", _where(addr))
            return
        header = message.header
        if header.src == self.node and header.dst != self.node:
            # Our own datagram for another node, sent back to us: not ours to act on.
            self.dropped.count("reflected", _where(addr))
            return
        kind = header.type
        if kind == protocol.DATA:
            if header.dst not in (0, self.node):
                self.dropped.count("data for another node", _where(addr))
                self._introduce(header, addr)
                return
            if not self.inbound.on_data(message, addr):
                self.dropped.count("malformed message", _where(addr))
            self._note_heard(header, addr)
        elif kind == protocol.ACK:
            if header.dst != self.node:
                self.dropped.count("ack for another node", _where(addr))
                return
            self.inbox.put(events.AckArrived(message, addr))
        elif kind == protocol.HELLO:
            self.inbox.put(events.HelloArrived(message, addr))

    def _introduce(self, header, addr):
        """Tell a sender that believes another node lives here who we are (its database
        may have been replaced); it then resends what was not committed. At most once
        a second per address."""
        now = time.monotonic()
        key = ("hello", addr[0], addr[1])
        if self._remember(key, now, HELLO_INTERVAL_S):
            self.inbound.send(protocol.encode_hello(self.inbound.port, self.node,
                                                    header.src, self.inbound.boot), addr)

    def _note_heard(self, header, addr):
        now = time.monotonic()
        if self._remember((addr[0], header.port), now, HEARD_INTERVAL_S):
            self.inbox.put(events.PeerHeard(header.src, addr[0], header.port))

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
