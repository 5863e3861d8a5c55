"""Looking at a running daemon from outside: its log since a mark, its memory, its
STATUS= figures."""

import re

LEVELS = ("WARNING", "ERROR", "CRITICAL")


class LogMark:
    """A position in a Daemon's stderr log (all runs); lines() is what came after it."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.offset = self._size()

    def _size(self):
        path = self.daemon.stderr_path
        return path.stat().st_size if path.exists() else 0

    def text(self, upto=None):
        with open(self.daemon.stderr_path, "rb") as f:
            f.seek(self.offset)
            raw = f.read() if upto is None else f.read(max(0, upto.offset - self.offset))
        return raw.decode("utf-8", "replace")

    def lines(self, upto=None):
        return [line for line in self.text(upto).splitlines()
                if line.strip() and not line.startswith("==== run ")]

    def problems(self, upto=None):
        """Lines at WARNING or above."""
        return [line for line in self.lines(upto) if any(f" {lv}" in line for lv in LEVELS)]


def matching(lines, pattern):
    rx = re.compile(pattern, re.I)
    return [line for line in lines if rx.search(line)]


def rss_bytes(pid):
    """Resident memory of a process (bytes), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def status_number(daemon, pattern):
    """The number the daemon's latest STATUS= shows for regex `pattern` (one group), or
    None when no STATUS says it."""
    rx = re.compile(pattern)
    for value in reversed(daemon.notify.values("STATUS")):
        m = rx.search(value)
        if m:
            return int(m.group(1))
    return None
