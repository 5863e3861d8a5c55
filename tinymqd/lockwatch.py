"""Whether another process is about to write the database: the writer lets it go first.

The sqlite3 CLI sets no busy timeout, so its INSERT fails at once if the daemon holds the
write lock at that moment. But a CLI process holds SQLite's SHARED lock on the database
file from its very first read (a fraction of a millisecond or more before it asks for
the write lock) until it exits. The writer looks for such locks held by other processes
and, while it sees one, waits before taking the write lock.

A process that keeps the database open for long (a consumer with a persistent
connection, an interactive shell) holds that lock all the time; after RESIDENT_AFTER the
writer stops waiting for it, but still waits for the short-lived ones beside it. Such
long-lived programs should set a busy timeout (Python's sqlite3 module waits 5 s by
default).

Who holds the lock: /proc/locks lists every holder. Where it cannot be read, F_GETLK
names one of them (the oldest), which hides short-lived processes behind a long-lived
one. The lock layout is SQLite's documented file-locking protocol: SHARED locks are read
locks on the 510 bytes after the PENDING byte (offset 0x40000000) plus 2.
"""

import fcntl
import os
import struct
import time

SHARED_FIRST = 0x40000000 + 2
SHARED_SIZE = 510
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (64-bit offsets)
PROC_LOCKS = "/proc/locks"

POLL = 0.0002  # how often to look again while another process is in its transaction
MAX_WAIT = 0.05  # never wait longer than this in one go, and after such a wait, not at
# all for as long again: short-lived processes that never leave a gap get half the time
RESIDENT_AFTER = 0.1  # a process seen this long keeps the database open: stop waiting


class OtherConnections:
    """Sees SQLite connections of other processes to one database file.

    Keep the object for the life of the process's SQLite connections: closing any
    descriptor of a file drops all of this process's POSIX locks on it, SQLite's too.
    """

    def __init__(self, path, proc_locks=PROC_LOCKS):
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self._fd)
        # How /proc/locks names the file: major:minor:inode, then the locked range.
        self._lock_id = (f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
                         f"{SHARED_FIRST} ").encode()
        self._proc_locks = proc_locks
        self._own = os.getpid()
        self._first_seen = {}  # pid -> when it was first seen, while it stays
        self._no_wait_until = 0.0

    def holders(self):
        """The pids of other processes holding a SHARED lock (0: a process in another
        pid namespace)."""
        pids = set()
        try:
            with open(self._proc_locks, "rb") as f:
                table = f.read()
        except OSError:
            table = b""
        for line in table.splitlines():
            if self._lock_id in line and b"->" not in line:  # "->": waiting, not holding
                pids.add(int(line.split()[4]))
        if self._own in pids:
            return pids - {self._own}
        # Our own connections hold the lock too: not listed means the table is not
        # readable here or names the file differently. One holder is all we can know.
        pid = self.oldest_holder()
        return set() if pid is None else {pid}

    def oldest_holder(self):
        """F_GETLK: the pid of one other process holding a SHARED lock, or None."""
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, SHARED_FIRST, SHARED_SIZE, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(self._fd, fcntl.F_GETLK, probe))
        return None if kind == fcntl.F_UNLCK else pid

    def wait_until_alone(self):
        """Wait while a short-lived connection of another process is open (at most
        MAX_WAIT); return the seconds waited."""
        start = now = time.monotonic()
        if now < self._no_wait_until:
            return 0.0
        while True:
            pids = self.holders()
            for gone in self._first_seen.keys() - pids:
                del self._first_seen[gone]
            short_lived = [pid for pid in pids
                           if now - self._first_seen.setdefault(pid, now) < RESIDENT_AFTER]
            if not short_lived:
                return now - start
            if now - start >= MAX_WAIT:
                self._no_wait_until = now + MAX_WAIT
                return now - start
            time.sleep(POLL)
            now = time.monotonic()

    def close(self):
        """Only after every SQLite connection of this process to the file is closed."""
        os.close(self._fd)
