"""A test-controlled UDP peer: records what a daemon sends it and never answers unless told.

Used as a "blackhole" destination (a peer that is up but never acknowledges), to capture a
daemon's real datagrams, and to send forged ones from the peer's own address.
"""

import socket
import threading
import time

from tests.support.ports import udp_socket


class UdpSink:
    def __init__(self, host="127.0.0.1", port=0, echo=False):
        self.echo = echo
        self.sock = udp_socket(host, port, timeout=0.1)
        self.host, self.port = self.sock.getsockname()[:2]
        self.received = []  # (monotonic time, bytes, address)
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.port}", daemon=True)
        self._thread.start()

    def _run(self):
        while self._running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                if not self._running:
                    break
                continue
            with self._cond:
                self.received.append((time.monotonic(), data, addr))
                self._cond.notify_all()
            if self.echo:
                try:
                    self.sock.sendto(data, addr)
                except OSError:
                    pass

    def count(self):
        with self._cond:
            return len(self.received)

    def datagrams(self, since=0):
        with self._cond:
            return [d for _t, d, _a in self.received[since:]]

    def sources(self):
        with self._cond:
            return {a for _t, _d, a in self.received}

    def send(self, data, addr):
        self.sock.sendto(data, addr)

    def close(self):
        self._running = False
        self._thread.join(timeout=2)
        self.sock.close()
