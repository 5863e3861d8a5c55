"""Free loopback UDP ports for tests."""

import socket
import threading

_lock = threading.Lock()
_handed_out = set()


def free_udp_port(host="127.0.0.1"):
    """A UDP port that is free on `host` now and was not handed out before in this run.

    The port is released before returning, so a daemon can bind it; the small race with
    other processes is accepted (the kernel hands out ephemeral ports round-robin).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _lock:
        for _ in range(200):
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port in _handed_out:
                continue
            # also make sure the wildcard address is free (a daemon may bind "::")
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("0.0.0.0", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free UDP port")


def udp_socket(host="127.0.0.1", port=0, timeout=None):
    """A bound UDP socket on loopback (port 0 = any)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, port))
    if timeout is not None:
        s.settimeout(timeout)
    return s


def ipv6_loopback_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
