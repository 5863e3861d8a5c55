"""What may come in: the receiver asks the gate about every datagram.

- Keys: datagrams from a peer that has a key (`peers`) must be sealed with one of its
  keys, and with require_key every datagram must be; a sealed datagram seen before (same
  sending run and counter) is a replay and is dropped.
- `allow`: only these networks may send data.
- Cookies: DATA is taken only when it echoes our run id and the cookie of the address it
  comes from, a keyed hash of that address with a secret of this run. A sender learns its
  cookie from a HELLO sent to that address, no larger than the DATA it answers; so a
  source that cannot receive at the address it claims (a spoofer) never gets anything
  stored, acknowledged, or sent to it beyond that one small HELLO.
"""

import hashlib
import ipaddress
import os
import time

from tinymqd import protocol, sealing, transport

COOKIE_SECRET_BYTES = 32
HELLO_INTERVAL_S = 1.0  # one cookie HELLO per address and stream at most this often
HELLO_RATE = 2000  # cookie HELLOs per second at most, all addresses together
MAX_REMEMBERED = 20000  # (address, stream) pairs remembered for HELLO_INTERVAL_S
KEYS_CACHE = 4096  # source addresses whose keys are remembered


class Gate:
    def __init__(self, origin, peer_keys, require_key, allow):
        self.origin = origin
        self.reconfigure(peer_keys, require_key, allow)
        self.sessions = origin.sessions
        self.replays = sealing.ReplayWindow()
        self._secret = os.urandom(COOKIE_SECRET_BYTES)
        self._cookies = {}  # (address, port) -> cookie: computed once per address
        self._hellos = {}
        self._hello_budget = HELLO_RATE
        self._budget_at = time.monotonic()

    # -- admission of every datagram ------------------------------------------------------

    def keys_for(self, ip):
        """[(name, key)] a datagram from this address may be sealed with."""
        peer_keys, cache = self._keys  # one pair: a reload replaces both at once
        if not peer_keys:
            return []
        pairs = cache.get(ip)
        if pairs is None:
            if len(cache) > KEYS_CACHE:
                cache.clear()
            pairs = cache[ip] = peer_keys.for_source(ip)
        return pairs

    def open(self, datagram, addr):
        """The decoded datagram if it may come in; raises protocol.BadDatagram saying
        why not."""
        ip = addr[0]
        message = protocol.decode(datagram, lambda: self.keys_for(ip), self.sessions)
        header = message.header
        if header.key is None:
            if self.require_key:
                raise protocol.BadDatagram("unsealed (require_key)")
            if self.keys_for(ip):
                raise protocol.BadDatagram("unsealed from a keyed peer")
        elif not self.replays.fresh(header.node, header.run, header.counter):
            raise protocol.BadDatagram("replayed")
        return message

    def refresh_keys(self):
        """After the peers' names were resolved again."""
        self._keys = (self._keys[0], {})

    def reconfigure(self, peer_keys, require_key, allow):
        """Keys, require_key and allow (at start and on reload)."""
        # (keys.PeerKeys, {ip: its keys}): what a lookup made from replaced keys stores
        # goes into the replaced cache, never into the new one
        self._keys = (peer_keys, {})
        self.require_key = require_key
        self.allow = allow  # networks, or None for any

    # -- data ---------------------------------------------------------------------------

    def allowed(self, addr):
        if self.allow is None:
            return True
        try:
            address = transport.plain_address(addr[0])
        except ValueError:
            return False
        return any(address.version == net.version and address in net for net in self.allow)

    def cookie(self, addr):
        """The value DATA from this address must echo (never 0)."""
        ident = (addr[0], addr[1])
        value = self._cookies.get(ident)
        if value is None:
            if len(self._cookies) > MAX_REMEMBERED:
                self._cookies.clear()
            value = self._cookies[ident] = self._compute_cookie(addr)
        return value

    def _compute_cookie(self, addr):
        try:
            packed = ipaddress.ip_address(addr[0].split("%", 1)[0]).packed
        except ValueError:
            packed = addr[0].encode()
        digest = hashlib.blake2b(packed + addr[1].to_bytes(2, "big"), key=self._secret,
                                 digest_size=8).digest()
        return (int.from_bytes(digest, "big") & protocol.MAX_ID) or 1

    def validated(self, data, addr):
        """The DATA comes from a sender that receives at its address, in our run."""
        return data.header.peer_run == self.origin.run and data.cookie == self.cookie(addr)

    def introduce(self, data, addr, local, send):
        """Answer DATA that did not echo our run or the cookie: a HELLO with both (in its
        header and body), naming the sender's stream, sealed like the DATA. At most one
        per address and stream a second, HELLO_RATE in all; never larger than the DATA."""
        now = time.monotonic()
        ident = (addr[0], addr[1], data.stream)
        if self._hellos.get(ident, 0.0) + HELLO_INTERVAL_S > now or not self._spend(now):
            return False
        if len(self._hellos) > MAX_REMEMBERED:
            self._hellos.clear()
        self._hellos[ident] = now
        key = self._key_named(data.header.key, addr[0])
        send(protocol.encode_hello(self.origin, data.header.run, data.stream,
                                   self.cookie(addr), key, data.tag), addr, local)
        return True

    def _spend(self, now):
        self._hello_budget = min(HELLO_RATE, self._hello_budget
                                 + (now - self._budget_at) * HELLO_RATE)
        self._budget_at = now
        if self._hello_budget < 1:
            return False
        self._hello_budget -= 1
        return True

    def _key_named(self, name, ip):
        if name is None:
            return None
        for each, key in self.keys_for(ip):
            if each == name:
                return key
        return None
