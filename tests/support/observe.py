"""Looking at a running daemon from outside: its log since a mark, its memory and CPU
time, its STATUS= figures."""

import os
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


def memory_kib(pid, key="VmRSS"):
    """A memory figure of a process from /proc/PID/status in KiB (VmRSS: resident now,
    VmHWM: the peak); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def memory_mb(pid, key="VmRSS"):
    return memory_kib(pid, key) / 1024


def rss_bytes(pid):
    """Resident memory of a process (bytes), 0 if it is gone."""
    return memory_kib(pid) * 1024


def cpu_seconds(pid):
    """CPU time (user + system) a process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_number(daemon, pattern):
    """The number the daemon's latest STATUS= shows for regex `pattern` (one group), or
    None when no STATUS says it."""
    rx = re.compile(pattern)
    for value in reversed(daemon.notify.values("STATUS")):
        m = rx.search(value)
        if m:
            return int(m.group(1))
    return None
