"""The UDP socket, the one path datagrams leave by, and addresses.

A host may have several addresses. Replies leave from the address the datagram they
answer arrived at (IPV6_PKTINFO on the dual-stack socket, IP_PKTINFO on an IPv4 one), so
that a peer sees them come from where it sent to.
"""

import errno
import ipaddress
import logging
import socket
import struct

log = logging.getLogger("tinymqd")

BUFFER_BYTES = 4 * 1024 * 1024  # the kernel caps this at net.core.[rw]mem_max
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 lacks the name
IN6_PKTINFO = struct.Struct("16sI")  # struct in6_pktinfo: address, interface index
IN_PKTINFO = struct.Struct("I4s4s")  # struct in_pktinfo: index, local address, header dst
ANCILLARY_BYTES = socket.CMSG_SPACE(IN6_PKTINFO.size)


class BindError(Exception):
    """The socket cannot be bound; str() is the one line shown to the user."""


def open_socket(bind, port):
    """A non-blocking UDP socket on (bind, port); '::' falls back to IPv4 if need be."""
    family = socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
    try:
        sock = _bound(family, bind, port)
    except OSError as e:
        if bind == "::" and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            log.warning("IPv6 is not available (%s); listening on 0.0.0.0 (IPv4 only)",
                        e.strerror)
            sock = _bound(socket.AF_INET, "0.0.0.0", port)
        else:
            raise BindError(f"cannot listen on UDP [{bind}]:{port}: {e.strerror}") from None
    sock.setblocking(False)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    for option, name in ((socket.SO_RCVBUF, "receive"), (socket.SO_SNDBUF, "send")):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
        except OSError as e:  # the default buffer works, it only drops sooner in bursts
            log.debug("cannot set the socket's %s buffer to %d bytes: %s", name,
                      BUFFER_BYTES, e.strerror)
    return sock


def receive(sock, size):
    """(datagram, source address, local address it arrived at: an opaque value for
    Sender.send, or None) of one waiting datagram; raises BlockingIOError when none."""
    datagram, ancillary, _, addr = sock.recvmsg(size, ANCILLARY_BYTES)
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            # The interface matters only for a link-local address (fe80::/10); else the
            # routing table picks it, as for any datagram.
            link_local = data[0] == 0xFE and data[1] & 0xC0 == 0x80
            return datagram, addr, (level, kind, data[:16] + (data[16:20] if link_local
                                                             else bytes(4)))
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            return datagram, addr, (level, kind, IN_PKTINFO.pack(0, data[8:12], bytes(4)))
    return datagram, addr, None


class Sender:
    """Sends datagrams on the daemon's socket for every thread (sendto is thread-safe
    on a datagram socket). A failed send is counted, never raised: to the protocol it
    is a lost datagram, which retransmission takes care of."""

    def __init__(self, sock):
        self._sendto = sock.sendto
        self._sendmsg = sock.sendmsg
        self.errors = 0

    def send(self, datagram, addr, local=None):
        """local: where the datagram we answer arrived (transport.receive): the reply
        leaves from that address."""
        try:
            if local is None:
                self._sendto(datagram, addr)
            else:
                self._sendmsg([datagram], [local], 0, addr)
            return True
        except OSError as e:
            self.errors += 1
            log.debug("send to %s failed: %s", format_endpoint(addr[0], addr[1]), e)
            return False


def _bound(family, bind, port):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and bind == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((bind, port))
    except OSError:
        sock.close()
        raise
    return sock


def literal_address(host):
    """The host as an IP address object, or None when it is a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve(host, port, family):
    """The socket address to send to host:port; raises OSError (socket.gaierror)."""
    return resolve_all(host, port, family)[0]


def resolve_all(host, port, family):
    """The socket addresses of host:port that our socket can send to, in the order
    getaddrinfo prefers, each once; raises OSError (socket.gaierror) when there is none."""
    found = []
    for fam, _, _, _, addr in socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM):
        if family == socket.AF_INET:
            usable = addr[:2] if fam == socket.AF_INET else None
        elif fam == socket.AF_INET6:
            usable = addr
        else:
            usable = (f"::ffff:{addr[0]}", addr[1], 0, 0) if fam == socket.AF_INET else None
        if usable is not None and usable not in found:
            found.append(usable)
    if not found:
        raise socket.gaierror(f"no IPv4 address for {host} (bind is IPv4 only)"
                              if family == socket.AF_INET else f"no usable address for {host}")
    return found


def reaches_us(addr, bind, port, family):
    """True when a datagram to addr comes to our own socket (bound to bind:port): the
    port is ours and the address is the one we bound, or, bound to all, one of this
    host's addresses (it can be bound)."""
    if addr[1] != port:
        return False
    if not ipaddress.ip_address(bind).is_unspecified:
        return plain_address(addr[0]) == plain_address(bind)
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.bind((addr[0], 0))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def plain_address(ip):
    """The address object of an IP address text (a scope id dropped), IPv4-mapped IPv6
    as IPv4, as addresses are compared. Raises ValueError."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    return getattr(address, "ipv4_mapped", None) or address


def format_endpoint(host, port):
    """host:port as admins write it: [v6]:port for IPv6, IPv4-mapped shown as IPv4."""
    host = display_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def display_host(host):
    """An address as an admin would write it: IPv4-mapped IPv6 shown as plain IPv4."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def same_endpoint(a, b):
    return a is not None and b is not None and a[0] == b[0] and a[1] == b[1]
