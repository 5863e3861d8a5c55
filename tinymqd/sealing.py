"""Sealing datagrams for keyed peers: AES-256-GCM with session keys derived from a
pre-shared key, and a window against replays (see docs/PROTOCOL.md, "Keyed peers").

A sealed datagram is the 40-byte header (flag SEALED set), 4 random bytes, then the
body encrypted and authenticated with the header as associated data; no CRC. Its key is
HKDF-SHA256 of the pre-shared key with both run ids (source's, then destination's as the
source knows it), and its nonce the header's counter and the 4 random bytes. Run ids are
random per start and the counter never repeats within a run, so a nonce never repeats
under one key, across restarts, clock changes and copied databases alike.
"""

import collections
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT_BYTES = 4
TAG_BYTES = 16
OVERHEAD = SALT_BYTES + TAG_BYTES  # beyond an unsealed datagram, less its 4-byte CRC
INFO = b"tinymq v2 session key"
RUNS = struct.Struct("!QQ")
NONCE = struct.Struct("!Q4s")
SESSIONS = 4096  # session keys kept (each costs a key derivation to make again)
REPLAY_WINDOW = 4096  # counters of one run accepted out of order
REPLAY_RUNS = 4096  # sending runs whose window is kept


class NotAuthentic(Exception):
    """No key of the peer opens the datagram: forged, damaged, or another key."""


class Sessions:
    """AES-GCM objects for (pre-shared key, source run, destination run), derived once."""

    def __init__(self):
        self._cache = collections.OrderedDict()

    def get(self, key, src_run, dst_run):
        ident = (key, src_run, dst_run)
        aead = self._cache.get(ident)
        if aead is None:
            derived = HKDF(hashes.SHA256(), 32, salt=RUNS.pack(src_run, dst_run),
                           info=INFO).derive(key)
            aead = self._cache[ident] = AESGCM(derived)
            if len(self._cache) > SESSIONS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(ident)
        return aead


def seal(sessions, key, header, body, src_run, dst_run, counter):
    """The sealed datagram for header (flag set) + body."""
    salt = os.urandom(SALT_BYTES)
    aead = sessions.get(key, src_run, dst_run)
    return header + salt + aead.encrypt(NONCE.pack(counter, salt), body, header)


def open_sealed(sessions, keys, datagram, header_size, src_run, dst_run, counter):
    """(body, key name) of a sealed datagram; keys: [(name, key)], tried in order.
    Raises NotAuthentic."""
    header = datagram[:header_size]
    salt = datagram[header_size:header_size + SALT_BYTES]
    sealed = datagram[header_size + SALT_BYTES:]
    if len(salt) < SALT_BYTES or len(sealed) < TAG_BYTES:
        raise NotAuthentic("truncated")
    nonce = NONCE.pack(counter, salt)
    for name, key in keys:
        try:
            return sessions.get(key, src_run, dst_run).decrypt(nonce, sealed, header), name
        except InvalidTag:
            continue
    raise NotAuthentic("no key opens it")


class ReplayWindow:
    """Counters seen from each sending run (node, run): a sealed datagram whose counter
    was seen, or lies more than REPLAY_WINDOW below the highest seen, is a replay."""

    def __init__(self):
        self._runs = collections.OrderedDict()  # (node, run) -> [highest, bitmask]

    def fresh(self, node, run, counter):
        """True, and remember the counter, if it was not seen."""
        ident = (node, run)
        state = self._runs.get(ident)
        if state is None:
            self._runs[ident] = [counter, 1]
            if len(self._runs) > REPLAY_RUNS:
                self._runs.popitem(last=False)
            return True
        self._runs.move_to_end(ident)
        highest, seen = state
        if counter > highest:
            shift = counter - highest
            state[0] = counter
            state[1] = ((seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) \
                if shift < REPLAY_WINDOW else 1
            return True
        behind = highest - counter
        if behind >= REPLAY_WINDOW or seen >> behind & 1:
            return False
        state[1] = seen | (1 << behind)
        return True
