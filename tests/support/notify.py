"""A NOTIFY_SOCKET listener: what systemd sees of a Type=notify service."""

import os
import shutil
import socket
import tempfile
import threading
import time


class NotifyListener:
    """Binds an AF_UNIX SOCK_DGRAM socket in a short temporary directory and records
    every sd_notify datagram as (monotonic time, {KEY: value}, raw text).

    Use .path as NOTIFY_SOCKET. The socket path must stay under 108 bytes, hence a
    directory of its own under /tmp rather than pytest's long tmp_path.
    """

    def __init__(self):
        self._dir = tempfile.mkdtemp(prefix="tmqn-")
        os.chmod(self._dir, 0o755)
        self.path = os.path.join(self._dir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o777)  # a daemon dropped to another uid can still notify
        self._sock.settimeout(0.2)
        self._cond = threading.Condition()
        self.messages = []  # (t, dict, raw)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self):
        while self._running:
            try:
                raw = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            text = raw.decode("utf-8", "replace")
            fields = {}
            for line in text.split("\n"):
                if "=" in line:
                    key, _, value = line.partition("=")
                    fields[key] = value
            with self._cond:
                self.messages.append((time.monotonic(), fields, text))
                self._cond.notify_all()

    def mark(self):
        """Index to pass as `since` so that only later messages count."""
        with self._cond:
            return len(self.messages)

    def find(self, key, value=None, since=0):
        """First message at or after index `since` that sets key (to value); or None."""
        with self._cond:
            for t, fields, _raw in self.messages[since:]:
                if key in fields and (value is None or fields[key] == value):
                    return t, fields
        return None

    def values(self, key, since=0):
        with self._cond:
            return [fields[key] for _t, fields, _raw in self.messages[since:] if key in fields]

    def wait_for(self, key, value=None, since=0, timeout=10.0, alive=None):
        """Wait until a message sets key (to value). Returns (t, fields) or None on timeout.

        alive: optional callable; when it returns False the wait ends early (returns None).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, fields, _raw in self.messages[since:]:
                    if key in fields and (value is None or fields[key] == value):
                        return t, fields
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if alive is not None and not alive():
                    # one last look happens on the next loop turn only if time is left
                    self._cond.wait(0.05)
                    for t, fields, _raw in self.messages[since:]:
                        if key in fields and (value is None or fields[key] == value):
                            return t, fields
                    return None
                self._cond.wait(min(remaining, 0.05))

    def close(self):
        self._running = False
        try:
            self._sock.close()
        except OSError:
            pass
        self._thread.join(timeout=2)
        shutil.rmtree(self._dir, ignore_errors=True)
