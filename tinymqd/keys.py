"""Pre-shared keys: reading the key file, and which keys a peer uses (the `peers` map).

The key file is YAML, `name: base64 of 32 random bytes`. It must not be writable by
group or others, nor readable by others (0640 root:tinymq is right). `peers` maps a host
name, an IP address, a CIDR or "*" to a key name or a list of them: the first seals what
we send, all are accepted (so a key can be rotated). The most specific entry wins: a
host name or an address before a network, a longer prefix before a shorter one, "*"
last.
"""

import base64
import binascii
import ipaddress
import os
import socket
import stat

import yaml

from tinymqd import transport

KEY_BYTES = 32
ANY = "*"


class KeysError(Exception):
    """A problem with the key file or peers; str() names the file or key."""


def load_key_file(path):
    """{name: 32-byte key} from the key file; raises KeysError naming the problem."""
    try:  # O_NONBLOCK: a FIFO must not hang the start or a reload
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise KeysError(f"{path}: cannot read: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise KeysError(f"{path}: is not a regular file")
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise KeysError(f"{path}: is writable by group or others (mode "
                            f"{stat.S_IMODE(mode):04o}); make it 0640 root:tinymq")
        if mode & stat.S_IROTH:
            raise KeysError(f"{path}: is readable by others (mode {stat.S_IMODE(mode):04o}); "
                            f"make it 0640 root:tinymq")
        with os.fdopen(fd, encoding="utf-8") as f:
            fd = None
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise KeysError(f"{path}: not a YAML mapping of key names to keys "
                        f"({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise KeysError(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        if fd is not None:
            os.close(fd)
    if not isinstance(data, dict) or not data:
        raise KeysError(f"{path}: must be a mapping of key names to base64 keys "
                        f"(make one with: head -c 32 /dev/urandom | base64)")
    keys = {}
    for name, text in data.items():
        if not isinstance(name, str) or not name:
            raise KeysError(f"{path}: key name {name!r} is not a string")
        try:
            key = base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError):
            raise KeysError(f"{path}: key '{name}' is not base64") from None
        if len(key) != KEY_BYTES:
            raise KeysError(f"{path}: key '{name}' is {len(key)} bytes, must be "
                            f"{KEY_BYTES} (head -c 32 /dev/urandom | base64)")
        keys[name] = key
    return keys


def parse_peers(peers, keys, source):
    """Check the `peers` mapping against the keys; {entry: [names]}."""
    out = {}
    for entry, names in peers.items():
        if not isinstance(entry, str) or not entry.strip():
            raise KeysError(f"{source}: key 'peers': {entry!r} is not a host name, "
                            f"address, network or \"*\"")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(
                isinstance(n, str) for n in names):
            raise KeysError(f"{source}: key 'peers': '{entry}' must name a key or a list "
                            f"of keys")
        for name in names:
            if name not in keys:
                raise KeysError(f"{source}: key 'peers': '{entry}' names key '{name}', "
                                f"which the key file does not have")
        if entry != ANY and _network(entry) is None and not _host_name(entry):
            raise KeysError(f"{source}: key 'peers': {entry!r} is not a host name, "
                            f"address, network or \"*\"")
        out[entry] = names
    return out


IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _network(text):
    """The network an entry names (IPv4-mapped IPv6 ones as IPv4, as sources are
    compared), or None for a host name."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if network.version == 6 and network.subnet_of(IPV4_MAPPED) and network.prefixlen >= 96:
        return ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/"
                                    f"{network.prefixlen - 96}")
    return network


def _host_name(text):
    return all(part and len(part) < 64 and all(c.isalnum() or c in "-_" for c in part)
               for part in text.rstrip(".").split("."))


class PeerKeys:
    """Which keys a peer uses. Host-name entries match outgoing rows by name at once, and
    incoming datagrams by the addresses the names resolved to (refresh())."""

    def __init__(self, peers, keys):
        self.keys = keys
        self.by_name = {}
        self.networks = []  # (network, names), longest prefix first
        self.default = None
        for entry, names in peers.items():
            pairs = [(name, keys[name]) for name in names]
            network = _network(entry)
            if entry == ANY:
                self.default = pairs
            elif network is not None:
                self.networks.append((network, pairs))
            else:
                self.by_name[entry.lower().rstrip(".")] = pairs
        self.networks.sort(key=lambda item: -item[0].prefixlen)
        self.by_address = {}  # resolved addresses of host-name entries ...
        self.resolved = {}  # ... by name

    def __bool__(self):
        return bool(self.by_name or self.networks or self.default)

    def refresh(self, resolve=socket.getaddrinfo):
        """Look up the host-name entries again (blocking: call it off the hot path)."""
        found, resolved = {}, {}
        for name, pairs in self.by_name.items():
            try:
                infos = resolve(name, None, 0, socket.SOCK_DGRAM)
            except (OSError, UnicodeError):
                continue
            resolved[name] = [transport.plain_address(info[4][0]) for info in infos]
            for address in resolved[name]:
                found.setdefault(address, pairs)
        self.by_address, self.resolved = found, resolved

    def carry_over(self, old):
        """Until refresh() has run: the addresses `old` found for the names both have
        (a reload must not forget, while it looks them up, who a known peer is)."""
        for name, addresses in old.resolved.items():
            pairs = self.by_name.get(name)
            if pairs:
                self.resolved[name] = addresses
                for address in addresses:
                    self.by_address.setdefault(address, pairs)

    def for_destination(self, host, ip):
        """[(name, key)] for a destination: by the host as the row names it, else by its
        address; [] when no entry matches."""
        pairs = self.by_name.get(host.lower().rstrip(".")) if host else None
        return pairs or self.for_source(ip)

    def for_source(self, ip):
        """[(name, key)] for datagrams from this address; [] when no entry matches."""
        if ip is None:
            return self.default or []
        try:
            address = transport.plain_address(ip)
        except ValueError:
            return self.default or []
        pairs = self.by_address.get(address)
        if pairs:
            return pairs
        for network, pairs in self.networks:
            if address.version == network.version and address in network:
                return pairs
        return self.default or []
