"""What other threads tell the scheduler: small named events, posted to its inbox
(wakeup.Inbox) and handled by the scheduler's dispatch table."""

import concurrent.futures
import threading
from typing import NamedTuple


class AckArrived(NamedTuple):
    """A peer acknowledged packets of one of our streams (from the receiver thread)."""
    ack: object  # protocol.Ack
    addr: tuple


class HelloArrived(NamedTuple):
    """A peer announced itself: it started, or we sent to a node that is not there."""
    hello: object  # protocol.Hello
    addr: tuple


class PeerHeard(NamedTuple):
    """A peer sent us data: it is alive, so a destination backing off can retry now."""
    node: int
    ip: str
    port: int


class AddressResolved(NamedTuple):
    """A name lookup finished (on a resolver thread)."""
    destination: int
    future: concurrent.futures.Future


class RowsRenumbered(NamedTuple):
    """The writer numbered rows that an application fixed."""
    xs: list


class OldRowsNumbered(NamedTuple):
    """The writer numbered a chunk of rows from before tinymqd (x in (after, upto])."""
    after: int
    upto: int
    last: bool


class Reply:
    """Where the scheduler puts the answer to a Request (another thread waits for it)."""

    def __init__(self):
        self._done = threading.Event()
        self.value = None

    def set(self, value):
        self.value = value
        self._done.set()

    def wait(self, timeout):
        """The answer, or None if none came in time."""
        return self.value if self._done.wait(timeout) else None


class Request(NamedTuple):
    """The control socket asks the scheduler: "status", "flush" (host, port or None) or
    "holds" (read tinymq_holds again)."""
    what: str
    host: object
    port: object
    reply: Reply


class Reconfigured(NamedTuple):
    """The configuration was reloaded: the new Config and keys.PeerKeys."""
    cfg: object
    peer_keys: object
