"""Whether another process is about to write the database: the writer lets it go first.

The sqlite3 CLI sets no busy timeout, so its INSERT fails at once if the daemon holds the
write lock at that moment. But a CLI process holds SQLite's SHARED lock on the database
file from its very first read (a millisecond or so before it asks for the write lock)
until it exits. The writer looks for such a lock held by another process (F_GETLK: one
system call, no lock taken) and, while it sees one, waits before taking the write lock.

A process that keeps the database open for long (a consumer with a persistent
connection, an interactive shell) holds that lock all the time; after RESIDENT_AFTER the
writer stops waiting for it. Such programs should set a busy timeout (Python's sqlite3
module waits 5 s by default).

The lock layout is SQLite's documented file-locking protocol: SHARED locks are read locks
on the 510 bytes after the PENDING byte (offset 0x40000000) plus 2.
"""

import fcntl
import os
import struct
import time

SHARED_FIRST = 0x40000000 + 2
SHARED_SIZE = 510
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (64-bit offsets)

POLL = 0.0002  # how often to look again while another process is in its transaction
MAX_WAIT = 0.05  # never wait longer than this in one go
RESIDENT_AFTER = 0.1  # a process seen this long keeps the database open: stop waiting


class OtherConnections:
    """Sees SQLite connections of other processes to one database file.

    Keep the object for the life of the process's SQLite connections: closing any
    descriptor of a file drops all of this process's POSIX locks on it, SQLite's too.
    """

    def __init__(self, path):
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._first_seen = {}  # pid -> when it was first seen, this time round
        self._resident = set()

    def holder(self):
        """The pid of another process holding a SHARED lock, or None (0: a process in
        another pid namespace)."""
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, SHARED_FIRST, SHARED_SIZE, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(self._fd, fcntl.F_GETLK, probe))
        return None if kind == fcntl.F_UNLCK else pid

    def wait_until_alone(self):
        """Wait while a short-lived connection of another process is open (at most
        MAX_WAIT); return the seconds waited."""
        start = now = time.monotonic()
        while now - start < MAX_WAIT:
            pid = self.holder()
            if pid is None:
                self._first_seen.clear()  # nobody there: every pid seen later is new
                self._resident.clear()
                break
            if pid in self._resident:
                break
            first = self._first_seen.setdefault(pid, now)
            if now - first >= RESIDENT_AFTER:
                self._resident.add(pid)
                break
            time.sleep(POLL)
            now = time.monotonic()
        return now - start

    def close(self):
        """Only after every SQLite connection of this process to the file is closed."""
        os.close(self._fd)
