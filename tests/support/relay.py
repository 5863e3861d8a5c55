"""A userspace UDP relay that misbehaves on purpose: loss, duplication, reordering, delay,
jitter, corruption and truncation, each configurable per direction, driven by a seeded
random.Random so a run can be repeated.

Datagrams a client sends to the relay's listening port go to the target ("forward"); the
target's replies come back to the relay's per-client upstream socket and are passed back
to that client from the listening port ("reverse"), like a NAT. Each client address gets
its own upstream socket, so the target can tell clients apart.

As a library::

    relay = Relay(("127.0.0.1", 9001), seed=1, loss=10, dup=5, reorder=5, jitter_ms=5)
    relay.start(); ... relay.port ... relay.snapshot()["forward"]["dropped"] ...; relay.stop()

As a program (for benchmarks and chaos by hand)::

    /usr/bin/python3 -m tests.support.relay --listen 9100 --target 127.0.0.1:9001 \
        --loss 10 --dup 5 --reorder 5 --delay-ms 1 --jitter-ms 5 --seed 1

Options without a prefix apply to both directions; --fwd-X / --rev-X override one
direction. It prints one "listening" line when ready and its counters as JSON on exit
(SIGTERM, SIGINT or --duration). Targets must be loopback unless --allow-any-target.
RelayProcess runs that program from a test or benchmark.
"""

import argparse
import collections
import dataclasses
import errno
import heapq
import ipaddress
import json
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from tests.support.daemon import PYTHON, REPO, daemon_env

DIRECTIONS = ("forward", "reverse")
COUNTERS = ("received", "sent", "dropped", "duplicated", "reordered", "delayed", "corrupted",
            "truncated", "send_errors", "bytes_received", "max_size", "discarded_at_stop")
MAX_DATAGRAM = 65535


@dataclasses.dataclass
class Faults:
    """What to do to datagrams in one direction. Percentages are 0..100."""
    loss: float = 0.0        # % dropped
    dup: float = 0.0         # % sent twice (the copy gets its own delay)
    reorder: float = 0.0     # % held back by reorder_ms so that later ones overtake them
    delay_ms: float = 0.0    # fixed delay added to every datagram
    jitter_ms: float = 0.0   # uniform random extra delay 0..jitter_ms
    reorder_ms: float = -1.0  # hold time of a reordered datagram; <0: max(10, 3 * jitter)
    corrupt: float = 0.0     # % with one random bit flipped
    truncate: float = 0.0    # % cut to a random shorter length

    def hold_ms(self):
        return self.reorder_ms if self.reorder_ms >= 0 else max(10.0, 3 * self.jitter_ms)

    def validate(self):
        for name in ("loss", "dup", "reorder", "corrupt", "truncate"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise ValueError(f"{name} must be a percentage 0..100, got {value}")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        return self


FAULT_FIELDS = [f.name for f in dataclasses.fields(Faults)]


def is_loopback(host):
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


class Relay:
    def __init__(self, target, listen=("127.0.0.1", 0), seed=0, forward=None, reverse=None,
                 capture=False, capture_limit=100000, allow_any_target=False, **common):
        """target: (host, port). forward/reverse: Faults or dict for one direction;
        common keyword arguments (loss=, dup=, ...) apply to both unless overridden."""
        host, port = target
        if not allow_any_target and not is_loopback(host):
            raise ValueError(f"refusing non-loopback target {host!r} (allow_any_target=True "
                             "for the project's own test namespaces)")
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.target_family, self.target = info[0], info[4]
        self._target_loopback = is_loopback(host)
        self.listen_addr = listen
        self.seed = seed
        self._faults = {}
        for direction, specific in (("forward", forward), ("reverse", reverse)):
            values = dict(common)
            if isinstance(specific, Faults):
                values.update(dataclasses.asdict(specific))
            elif specific:
                values.update(specific)
            self._faults[direction] = Faults(**values).validate()
        self._rng = {d: random.Random(f"{seed}:{d}") for d in DIRECTIONS}
        self.stats = {d: dict.fromkeys(COUNTERS, 0) for d in DIRECTIONS}
        self.capture = capture
        self.capture_limit = capture_limit
        self._captured = {d: collections.deque(maxlen=capture_limit) for d in DIRECTIONS}
        self._lock = threading.Lock()
        self._heap = []
        self._counter = 0
        self._clients = {}    # client address -> upstream socket
        self._upstream = {}   # upstream socket -> client address
        self._sel = None
        self._sock = None
        self._thread = None
        self._running = False
        self._wake_r = self._wake_w = None

    # -- control ----------------------------------------------------------------
    @property
    def port(self):
        return self._sock.getsockname()[1]

    @property
    def address(self):
        return self._sock.getsockname()[:2]

    def faults(self, direction):
        with self._lock:
            return dataclasses.replace(self._faults[direction])

    def set_faults(self, direction="both", **changes):
        """Change faults at run time, e.g. set_faults("forward", loss=100) to cut a link."""
        with self._lock:
            for d in (DIRECTIONS if direction == "both" else (direction,)):
                self._faults[d] = dataclasses.replace(self._faults[d], **changes).validate()

    def reset_stats(self):
        with self._lock:
            self.stats = {d: dict.fromkeys(COUNTERS, 0) for d in DIRECTIONS}
            for d in DIRECTIONS:
                self._captured[d].clear()

    def captured(self, *directions):
        """With capture=True: the datagrams received so far (since reset_stats()) in the
        given directions ("forward", "reverse"; both when none is named), in order."""
        with self._lock:
            return [d for direction in directions or DIRECTIONS
                    for d in self._captured[direction]]

    def send_from_listening_port(self, data, addr):
        """Send a datagram to addr from the address clients send to (as if the target had
        answered), bypassing the faults and counters."""
        self._sock.sendto(data, addr)

    def send_upstream(self, data, client):
        """Send a datagram to the target from the socket that carries `client`'s traffic
        (as if that client had sent it through the relay; the target sees it come from
        upstream_address(client)), bypassing the faults and counters. The client must
        have sent through the relay before."""
        self._clients[client].sendto(data, self.target)

    def upstream_address(self, client):
        """The address the target sees `client`'s datagrams come from."""
        return self._clients[client].getsockname()[:2]

    def snapshot(self):
        with self._lock:
            return {d: dict(v) for d, v in self.stats.items()}

    def start(self):
        family = socket.AF_INET6 if ":" in self.listen_addr[0] else socket.AF_INET
        self._sock = self._new_socket(family)
        self._sock.bind(self.listen_addr)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"relay-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if not self._running:
            return self.snapshot()
        self._running = False
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout=5)
        with self._lock:
            for _due, _n, direction, _sock, _data, _addr in self._heap:
                self.stats[direction]["discarded_at_stop"] += 1
            self._heap.clear()
        for s in list(self._upstream) + [self._sock, self._wake_r, self._wake_w]:
            try:
                s.close()
            except OSError:
                pass
        self._sel.close()
        return self.snapshot()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the loop ---------------------------------------------------------------
    @staticmethod
    def _new_socket(family):
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        except OSError:
            pass
        s.setblocking(False)
        return s

    def _upstream_for(self, client):
        sock = self._clients.get(client)
        if sock is None:
            sock = self._new_socket(self.target_family)
            sock.bind(("::1" if self.target_family == socket.AF_INET6 else "127.0.0.1", 0)
                      if self._target_loopback else ("", 0))
            self._clients[client] = sock
            self._upstream[sock] = client
            self._sel.register(sock, selectors.EVENT_READ, client)
        return sock

    def _loop(self):
        while self._running:
            now = time.monotonic()
            with self._lock:
                timeout = 0.1 if not self._heap else max(0.0, self._heap[0][0] - now)
            for key, _mask in self._sel.select(min(timeout, 0.1)):
                if key.data == "wake":
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass
                    continue
                self._drain(key.fileobj, key.data)
            self._flush_due()

    def _drain(self, sock, client):
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. ECONNREFUSED reported for an earlier send: ignore, go on reading
                continue
            if client is None:  # from a client, to the target
                self._handle("forward", data, self._upstream_for(addr), self.target)
            else:  # from the target, back to its client
                self._handle("reverse", data, self._sock, client)

    def _handle(self, direction, data, out_sock, out_addr):
        now = time.monotonic()
        with self._lock:
            faults = self._faults[direction]
            rng = self._rng[direction]
            st = self.stats[direction]
            st["received"] += 1
            st["bytes_received"] += len(data)
            st["max_size"] = max(st["max_size"], len(data))
            if self.capture:
                self._captured[direction].append(data)
            if rng.random() * 100 < faults.loss:
                st["dropped"] += 1
                return
            copies = 1
            if rng.random() * 100 < faults.dup:
                copies = 2
                st["duplicated"] += 1
            sends = []
            for _ in range(copies):
                out = data
                if out and rng.random() * 100 < faults.corrupt:
                    bit = rng.randrange(len(out) * 8)
                    out = bytearray(out)
                    out[bit // 8] ^= 1 << (bit % 8)
                    out = bytes(out)
                    st["corrupted"] += 1
                if len(out) > 1 and rng.random() * 100 < faults.truncate:
                    out = out[:rng.randrange(1, len(out))]
                    st["truncated"] += 1
                delay = faults.delay_ms + (rng.uniform(0, faults.jitter_ms) if faults.jitter_ms else 0)
                if rng.random() * 100 < faults.reorder:
                    delay += faults.hold_ms()
                    st["reordered"] += 1
                if delay > 0:
                    st["delayed"] += 1
                    self._counter += 1
                    heapq.heappush(self._heap, (now + delay / 1000.0, self._counter, direction,
                                                out_sock, out, out_addr))
                else:
                    sends.append(out)
        for out in sends:
            self._send(direction, out_sock, out, out_addr)

    def _flush_due(self):
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > time.monotonic():
                    return
                _due, _n, direction, sock, data, addr = heapq.heappop(self._heap)
            self._send(direction, sock, data, addr)

    def _send(self, direction, sock, data, addr):
        try:
            sock.sendto(data, addr)
            ok = True
        except OSError as exc:
            ok = False
            if exc.errno not in (errno.ECONNREFUSED, errno.EAGAIN, errno.ENOBUFS,
                                 errno.EWOULDBLOCK, errno.EPERM, errno.EMSGSIZE):
                raise
        with self._lock:
            self.stats[direction]["sent" if ok else "send_errors"] += 1


def can_spoof():
    """Whether this process may send datagrams with a forged source (a raw socket: root
    or CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
        return True
    except OSError:
        return False


def send_spoofed(data, source, target):
    """Send one UDP datagram to target (IPv4 host, port) that seems to come from source
    (IPv4 host, port), whoever holds that address: what an attacker on the network can
    do (UDP has no handshake). A raw socket (can_spoof()); the UDP checksum is left 0
    (optional on IPv4). Use loopback sources only: replies go to the source. Raises
    OSError (EMSGSIZE) for more than an IPv4 datagram holds, as a UDP socket does."""
    if len(data) > 65535 - 28:
        raise OSError(errno.EMSGSIZE, "message too long")
    udp = struct.pack("!HHHH", source[1], target[1], 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64,
                     socket.IPPROTO_UDP, 0, socket.inet_aton(source[0]),
                     socket.inet_aton(target[0]))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(ip + udp, (target[0], 0))


class RelayProcess:
    """The relay as its own process (the command line below), in front of
    127.0.0.1:target_port; faults as keyword arguments (loss=10, rev_loss=0, ...).
    .port is where it listens, .line what it printed when ready; stop() returns its
    counters (forward: towards the target, reverse: the replies)."""

    def __init__(self, target_port, seed=1, listen="127.0.0.1:0", **faults):
        args = [PYTHON, "-m", "tests.support.relay", "--listen", str(listen),
                "--target", f"127.0.0.1:{target_port}", "--seed", str(seed)]
        for key, value in faults.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, cwd=REPO, env=daemon_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.line = self.proc.stdout.readline()
        if not self.line.startswith("relay listening on "):
            self.proc.kill()
            raise RuntimeError(f"relay did not start: {self.line!r} {self.proc.stderr.read()}")
        self.port = int(self.line.split()[3].rsplit(":", 1)[1])
        self.stats = None
        self.stderr = ""

    def stop(self):
        """SIGTERM, then its counters ({} if it could not give them)."""
        if self.stats is None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                out, self.stderr = self.proc.communicate(timeout=10)
                self.stats = json.loads(out.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                self.proc.kill()
                self.proc.wait()
                self.stats = {}
        return self.stats


# -- command line ----------------------------------------------------------------
def _hostport(text):
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python3 -m tests.support.relay",
                                description="UDP relay with loss, duplication, reordering, "
                                            "delay/jitter, corruption and truncation.")
    p.add_argument("--listen", required=True, type=_hostport,
                   help="[HOST:]PORT to listen on (HOST defaults to 127.0.0.1; 0 = any port)")
    p.add_argument("--target", required=True, type=_hostport, help="HOST:PORT to forward to")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=3600.0,
                   help="stop by itself after this many seconds (default 3600)")
    p.add_argument("--stats-interval", type=float, default=0.0,
                   help="print counters as JSON every N seconds (0 = only at exit)")
    p.add_argument("--allow-any-target", action="store_true",
                   help="allow a non-loopback target (only the project's own test namespaces)")
    for field in dataclasses.fields(Faults):
        name = field.name.replace("_", "-")
        p.add_argument(f"--{name}", type=float, default=None, dest=field.name,
                       help=f"{field.name} for both directions (default {field.default})")
        p.add_argument(f"--fwd-{name}", type=float, default=None, dest=f"fwd_{field.name}",
                       help=argparse.SUPPRESS)
        p.add_argument(f"--rev-{name}", type=float, default=None, dest=f"rev_{field.name}",
                       help=argparse.SUPPRESS)
    p.epilog = "Each fault option also exists as --fwd-OPTION and --rev-OPTION for one direction."
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    common = {f: getattr(args, f) for f in FAULT_FIELDS if getattr(args, f) is not None}
    fwd = {f: getattr(args, f"fwd_{f}") for f in FAULT_FIELDS if getattr(args, f"fwd_{f}") is not None}
    rev = {f: getattr(args, f"rev_{f}") for f in FAULT_FIELDS if getattr(args, f"rev_{f}") is not None}
    try:
        relay = Relay(args.target, listen=args.listen, seed=args.seed,
                      forward={**common, **fwd}, reverse={**common, **rev},
                      allow_any_target=args.allow_any_target)
        relay.start()
    except (ValueError, OSError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    host, port = relay.address
    print(f"relay listening on {host}:{port} -> {args.target[0]}:{args.target[1]} "
          f"seed={args.seed} forward={dataclasses.asdict(relay.faults('forward'))} "
          f"reverse={dataclasses.asdict(relay.faults('reverse'))}", flush=True)
    deadline = time.monotonic() + args.duration
    next_stats = time.monotonic() + args.stats_interval if args.stats_interval > 0 else None
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        if next_stats is not None and now >= next_stats:
            print(json.dumps(relay.snapshot()), flush=True)
            next_stats = now + args.stats_interval
        stop.wait(0.1)
    print(json.dumps(relay.stop()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
