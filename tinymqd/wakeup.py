"""Waking the scheduler: an inbox other threads post to, and a watch on the database.

The scheduler sleeps in select() until a peer's acknowledgement is posted, another
process commits to the database (inotify on its directory: the WAL file changes), or a
timer is due. Nothing is polled at a high rate, so an idle daemon costs next to nothing.
"""

import collections
import ctypes
import ctypes.util
import logging
import os
import select

log = logging.getLogger("tinymqd")

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


class Inbox:
    """A queue of events for the scheduler whose arrival wakes it from select()."""

    def __init__(self):
        self._items = collections.deque()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sleeping = False

    def put(self, item):
        self._items.append(item)
        if self._sleeping:  # a write costs a system call: only when it is needed
            os.eventfd_write(self._fd, 1)

    def get_all(self, limit=10000):
        """What was posted, oldest first; at most `limit`, so that a steady stream of
        events cannot starve the caller's other work."""
        items = self._items
        for _ in range(min(limit, len(items))):
            yield items.popleft()

    def wait(self, timeout, watch=None):
        """Sleep until an item is posted, `watch` is readable, or timeout; True if the
        watched file descriptor fired."""
        self._sleeping = True
        try:
            if self._items:
                return False
            fds = [self._fd] if watch is None else [self._fd, watch]
            ready, _, _ = select.select(fds, [], [], timeout)
        finally:
            self._sleeping = False
        if self._fd in ready:
            try:
                os.eventfd_read(self._fd)
            except BlockingIOError:
                pass
        return watch is not None and watch in ready

    def close(self):
        os.close(self._fd)


class DirectoryWatch:
    """inotify on the database's directory: readable when any file there is written."""

    def __init__(self, directory):
        self.fd = None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, os.strerror(errno))
        self.fd = fd

    def fileno(self):
        return self.fd

    def clear(self):
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def watch_directory(directory):
    """A DirectoryWatch, or None (then the caller polls) where inotify is unavailable."""
    try:
        return DirectoryWatch(directory)
    except (OSError, AttributeError) as e:
        log.warning("cannot watch %s for new rows (%s); polling instead", directory, e)
        return None
