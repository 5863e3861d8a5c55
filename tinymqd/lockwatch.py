"""Whether another process is about to write the database: the writer lets it go first.

The sqlite3 CLI sets no busy timeout, so its INSERT fails at once if the daemon holds the
write lock at that moment. But a CLI process holds SQLite's SHARED lock on the database
file from its very first read (a fraction of a millisecond or more before it asks for
the write lock) until it exits. The writer looks for such locks held by other processes
and, while it sees one, waits before taking the write lock.

A process that keeps the database open for long (a consumer with a persistent
connection, an interactive shell) holds that lock all the time; once it has had the file
open for RESIDENT_AFTER the writer stops waiting for it, but still waits for the
short-lived ones beside it. Such long-lived programs should set a busy timeout (Python's
sqlite3 module waits 5 s by default).

Who holds the lock: F_GETLK, a cheap system call, names one other process holding it
(the one holding locks on the file the longest) or none; this process's own locks never
conflict with its probe. No holder: nothing to wait for, the common case. A holder:
whether it, or another one hidden behind it, is short-lived is told by an inotify watch
on the database file, made when a holder is first seen: a thread notes when processes
open and close the file (a CLI opens it just before it locks it and closes it after its
locks are gone), and any process that opened the file less than RESIDENT_AFTER ago and
has not closed it is waited for. Until the watch has been there for RESIDENT_AFTER, or
where inotify is missing, the holder F_GETLK names is taken as short-lived for
RESIDENT_AFTER after it was first seen (or after it started, where /proc shows that),
and a resident one hides others.

/proc/locks, which lists every holder, is never read: reading it takes the kernel's
global file-lock semaphore for writing, which after a quiet spell waits for an RCU grace
period (about 10 ms) while POSIX lock calls on the host wait too.

The lock layout is SQLite's documented file-locking protocol: SHARED locks are read
locks on the 510 bytes after the PENDING byte (offset 0x40000000) plus 2.
"""

import collections
import ctypes
import ctypes.util
import fcntl
import logging
import os
import select
import struct
import threading
import time

log = logging.getLogger("tinymqd.lockwatch")

SHARED_FIRST = 0x40000000 + 2
SHARED_SIZE = 510
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (64-bit offsets)

POLL = 0.0002  # how often to look again while another process is in its transaction
MAX_WAIT = 0.05  # never wait longer than this in one go, and after such a wait, not at
# all for as long again: short-lived processes that never leave a gap get half the time
RESIDENT_AFTER = 0.1  # a process with the file open this long keeps it open: stop waiting

IN_CLOSE_WRITE = 0x008
IN_CLOSE_NOWRITE = 0x010
IN_OPEN = 0x020
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then a name


class OtherConnections:
    """Sees SQLite connections of other processes to one database file.

    Keep the object for the life of the process's SQLite connections: closing any
    descriptor of a file drops all of this process's POSIX locks on it, SQLite's too.
    """

    def __init__(self, path, watch_opens=True):
        self._path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._first_seen = {}  # pid -> when F_GETLK first named it, while it names it
        self._no_wait_until = 0.0
        self.last_busy = float("-inf")  # when busy() last found a short-lived connection
        self._watch_opens = watch_opens
        self.opens = None  # the OpenWatch, once a holder was seen

    def oldest_holder(self):
        """F_GETLK: the pid of one other process holding a SHARED lock (0: a process in
        another pid namespace), or None."""
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, SHARED_FIRST, SHARED_SIZE, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(self._fd, fcntl.F_GETLK, probe))
        return None if kind == fcntl.F_UNLCK else pid

    def busy(self, now=None):
        """Whether a short-lived connection of another process is open now."""
        now = time.monotonic() if now is None else now
        pid = self.oldest_holder()
        if pid is None:
            self._first_seen.clear()
            return False
        if self._short_lived(pid, now):
            self.last_busy = now
            return True
        return False

    def wait_until_alone(self):
        """Wait while a short-lived connection of another process is open (at most
        MAX_WAIT); return the seconds waited."""
        start = now = time.monotonic()
        if now < self._no_wait_until:
            return 0.0
        while True:
            if not self.busy(now):
                return now - start
            if now - start >= MAX_WAIT:
                self._no_wait_until = now + MAX_WAIT
                return now - start
            time.sleep(POLL)
            now = time.monotonic()

    def _short_lived(self, pid, now):
        """Whether the holder `pid`, or one F_GETLK cannot see, may be short-lived."""
        if pid not in self._first_seen:
            # The one named before has let go. A process that has run for long is no
            # CLI about to insert (where /proc shows it: not another user's under
            # systemd's ProtectProc=invisible).
            self._first_seen = {pid: min(now, _started(pid, now))}
        opens = self._open_watch()
        if opens is not None and now - opens.since >= RESIDENT_AFTER:
            return opens.recent(now)
        return now - self._first_seen[pid] < RESIDENT_AFTER or bool(
            opens is not None and opens.recent(now))

    def _open_watch(self):
        if self.opens is None and self._watch_opens:
            try:
                self.opens = OpenWatch(self._path)
            except OSError as e:  # e.g. no inotify instance left: F_GETLK alone
                log.debug("cannot watch %s for other processes' opens: %s", self._path, e)
                self._watch_opens = False
        if self.opens is not None and self.opens.failed:
            self.opens.close()
            self.opens = None
            self._watch_opens = False
        return self.opens

    def close(self):
        """Only after every SQLite connection of this process to the file is closed."""
        if self.opens is not None:
            self.opens.close()
        os.close(self._fd)


def _started(pid, now):
    """When process pid started, on the time.monotonic() scale; `now` if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22: starttime
        # CLOCK_BOOTTIME, like starttime, counts from boot; monotonic may not.
        return now - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / _TICKS)
    except (OSError, IndexError, ValueError):
        return now


_TICKS = os.sysconf("SC_CLK_TCK")


class OpenWatch:
    """inotify on one file, read by a thread of its own so that every open and close is
    timed as it happens: recent() tells whether a process opened the file less than
    RESIDENT_AFTER ago and has not closed it yet (it first takes the events the thread
    has not read yet, a thread that may wait for its turn on a busy machine).

    Events carry no pid, so a close is taken to end the most recent open still counted:
    short-lived processes open and close within the lifetime of resident ones.
    """

    def __init__(self, path):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(path),
                                  IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, os.strerror(errno))
        self._fd = fd
        self._stop = os.eventfd(0, os.EFD_CLOEXEC)
        self._opened = collections.deque()  # when each open still counted happened
        self._lock = threading.Lock()
        self.failed = False
        self.since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lockwatch", daemon=True)
        self._thread.start()

    def recent(self, now):
        with self._lock:
            self._read(now)  # what the thread has not taken yet: a CLI opening just now
            return bool(self._opened) and now - self._opened[-1] < RESIDENT_AFTER

    def _read(self, now):
        try:
            while True:
                self._take(os.read(self._fd, 4096), now)
        except BlockingIOError:
            pass

    def _run(self):
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._stop], [], [])
                if self._stop in ready:
                    return
                with self._lock:
                    self._read(time.monotonic())
        except Exception as e:  # noqa: BLE001 - the writer then does without it
            log.warning("lockwatch: no longer watching opens of the database: %s", e)
            self.failed = True

    def _take(self, buf, now):
        """Count the events in buf (with self._lock held)."""
        opened = self._opened
        pos = 0
        while pos + _EVENT.size <= len(buf):
            _, mask, _, length = _EVENT.unpack_from(buf, pos)
            pos += _EVENT.size + length
            if mask & IN_OPEN:
                opened.append(now)
            elif mask & (IN_CLOSE_WRITE | IN_CLOSE_NOWRITE):
                if opened:
                    opened.pop()
            elif mask & (IN_Q_OVERFLOW | IN_IGNORED):
                opened.clear()  # events lost, or the file is gone: start afresh
        while opened and now - opened[0] > 3600:
            opened.popleft()  # opens never closed: residents, or closes we missed

    def close(self):
        os.eventfd_write(self._stop, 1)
        self._thread.join()
        os.close(self._fd)
        os.close(self._stop)
