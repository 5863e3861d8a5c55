"""Running tinymqd as a user would: a config file, a real NOTIFY_SOCKET, signals."""

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.support import db as dbmod
from tests.support.notify import NotifyListener
from tests.support.ports import free_udp_port
from tests.support.wait import add_check

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
# TINYMQD_CMD="tinymqd" runs the suite against an installed daemon instead of the tree.
DAEMON_CMD = shlex.split(os.environ.get("TINYMQD_CMD", f"{PYTHON} -m tinymqd"))
READY_TIMEOUT = float(os.environ.get("TINYMQ_TEST_READY_TIMEOUT", "10"))
STOP_LIMIT = 2.0  # README.md: SIGTERM/SIGINT -> exit 0 within 2 s

_ENV_DROP = ("NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID", "WATCHDOG_USEC", "WATCHDOG_PID",
             "LISTEN_FDS", "LISTEN_PID", "PYTHONHOME", "PYTHONSTARTUP")


def daemon_env(extra=None):
    """The environment of a daemon started outside systemd (logs go to stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def run_tinymqd(args, timeout=20, env=None, **kwargs):
    """Run tinymqd to completion (e.g. --version, --check-config); CompletedProcess with
    text stdout/stderr."""
    return subprocess.run(DAEMON_CMD + [str(a) for a in args], cwd=REPO, env=daemon_env(env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


class DaemonError(AssertionError):
    pass


_LIVE = set()  # daemons that sent READY=1 and were not stopped or killed by the test


def check_daemons():
    """Fail at once when a daemon that should be running has exited by itself."""
    for d in list(_LIVE):
        if d.proc is not None and d.proc.poll() is not None:
            _LIVE.discard(d)
            raise DaemonError(f"{d.name} (port {d.port}) died unexpectedly with exit code "
                              f"{d.proc.returncode}; stderr:\n{d.stderr_tail()}")


add_check(check_daemons)


class Daemon:
    """One tinymqd node: its directory, config, database, port and process.

    The port and database stay the same across restarts. stderr of every run is appended
    to <dir>/stderr.log; stderr_text() returns the current run's part.
    """

    def __init__(self, base_dir, name="a", port=None, database=None, bind="127.0.0.1",
                 log_level="info", **config):
        self.name = name
        self.dir = Path(base_dir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_udp_port()
        self.db = Path(database) if database else self.dir / "tinymq.db"
        self.config_path = self.dir / "tinymq.yaml"
        self.control_socket = self.dir / "control"  # never the system's /run/tinymq
        self.config = {"port": self.port, "bind": bind, "database": str(self.db),
                       "log_level": log_level, "control_socket": str(self.control_socket)}
        self.config.update(config)
        self.stderr_path = self.dir / "stderr.log"
        self.stdout_path = self.dir / "stdout.log"
        self.notify = None
        self.proc = None
        self.ready_at = None
        self.notify_mark = 0
        self._stderr_offset = 0
        self.runs = 0

    def __repr__(self):
        return f"<Daemon {self.name} port={self.port} pid={self.proc.pid if self.proc else None}>"

    # -- config ---------------------------------------------------------------
    def write_config(self, **overrides):
        self.config.update(overrides)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return self.config_path

    # -- process --------------------------------------------------------------
    def command(self, args=None, use_config=True):
        cmd = list(DAEMON_CMD)
        if use_config:
            cmd += ["--config", str(self.config_path)]
        cmd += [str(a) for a in (args or [])]
        return cmd

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, args=None, wait=True, timeout=READY_TIMEOUT, env=None, use_config=True,
              **popen):
        """Start the daemon; with wait=True, return once READY=1 came on NOTIFY_SOCKET."""
        if self.running:
            raise DaemonError(f"{self.name} is already running")
        if use_config:
            self.write_config()
        if self.notify is None:
            self.notify = NotifyListener()
        self.notify_mark = self.notify.mark()
        self.ready_at = None
        self._stderr_offset = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
        self.runs += 1
        with open(self.stderr_path, "ab") as err, open(self.stdout_path, "ab") as out:
            header = f"==== run {self.runs}: {' '.join(self.command(args, use_config))}\n"
            err.write(header.encode())
            err.flush()
            self._stderr_offset += len(header.encode())
            self.proc = subprocess.Popen(
                self.command(args, use_config), cwd=REPO,
                env=daemon_env({"NOTIFY_SOCKET": self.notify.path, **(env or {})}),
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                **popen)
        self.started_at = time.monotonic()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Wait for READY=1 (sent after this run started); fail with stderr if the daemon
        exits or the deadline passes. Returns the monotonic time READY=1 arrived."""
        got = self.notify.wait_for("READY", "1", since=self.notify_mark, timeout=timeout,
                                   alive=lambda: self.proc.poll() is None)
        if got is None:
            rc = self.proc.poll()
            if rc is None:
                self.kill()
                raise DaemonError(f"{self.name}: no READY=1 within {timeout:.0f} s; "
                                  f"stderr:\n{self.stderr_tail()}")
            raise DaemonError(f"{self.name}: exited with {rc} before READY=1; "
                              f"stderr:\n{self.stderr_tail()}")
        self.ready_at = got[0]
        _LIVE.add(self)
        return self.ready_at

    def send_signal(self, sig):
        _LIVE.discard(self)
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, limit=STOP_LIMIT, check=True):
        """Send sig (SIGTERM) and wait; with check, assert exit 0 within `limit` s.
        Returns (returncode, seconds taken)."""
        _LIVE.discard(self)
        if not self.running:
            rc = self.proc.returncode if self.proc else None
            if check:
                raise DaemonError(f"{self.name} was not running at stop (rc={rc}); "
                                  f"stderr:\n{self.stderr_tail()}")
            return rc, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=max(limit, 0) + 8)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DaemonError(f"{self.name}: still running {limit + 8:.0f} s after "
                              f"{signal.Signals(sig).name}; killed; stderr:\n{self.stderr_tail()}")
        took = time.monotonic() - t0
        if check:
            if rc != 0:
                raise DaemonError(f"{self.name}: exit code {rc} after {signal.Signals(sig).name} "
                                  f"(expected 0); stderr:\n{self.stderr_tail()}")
            if took >= limit:
                raise DaemonError(f"{self.name}: took {took:.2f} s to exit after "
                                  f"{signal.Signals(sig).name} (limit {limit} s)")
        return rc, took

    def kill(self):
        """SIGKILL (a crash) and reap."""
        _LIVE.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def restart(self, sig=signal.SIGTERM, **start_kwargs):
        if sig == signal.SIGKILL:
            self.kill()
        else:
            self.stop(sig)
        return self.start(**start_kwargs)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self):
        """Teardown: stop whatever still runs (quietly), close the listener."""
        _LIVE.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    # -- output -----------------------------------------------------------------
    def stderr_text(self, whole=False):
        if not self.stderr_path.exists():
            return ""
        with open(self.stderr_path, "rb") as f:
            if not whole:
                f.seek(self._stderr_offset)
            return f.read().decode("utf-8", "replace")

    def stderr_tail(self, lines=40, whole=False):
        text = self.stderr_text(whole=whole).splitlines()
        return "\n".join(text[-lines:])

    # -- queues -----------------------------------------------------------------
    def enqueue(self, dest, token, data, **kw):
        """Enqueue to another Daemon (or a port number) on 127.0.0.1."""
        port = dest.port if isinstance(dest, Daemon) else dest
        return dbmod.enqueue(self.db, "127.0.0.1", port, token, data, **kw)

    def query(self, sql, params=()):
        return dbmod.query(self.db, sql, params)

    def count(self, table, where="1", params=()):
        return dbmod.count(self.db, table, where, params)

    def assert_alive(self):
        if not self.running:
            raise DaemonError(f"{self.name} died (rc={self.proc.returncode}); stderr:\n"
                              f"{self.stderr_tail()}")



UNSHARE = shutil.which("unshare")


class OwnFilesDaemon(Daemon):
    """A daemon that sees files of its own in place of system ones (e.g. /etc/hosts,
    /etc/resolv.conf), bind-mounted in a mount namespace of its own as `ip netns exec`
    does; needs root. `files`: {system path: text}, set before start()."""

    files = {}

    def command(self, args=None, use_config=True):
        mounts = []
        for n, (target, text) in enumerate(sorted(self.files.items())):
            source = self.dir / f"own-file-{n}"
            source.write_text(text)
            mounts.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
        return [UNSHARE, "--mount", "sh", "-c", " && ".join(mounts + ['exec "$@"']),
                "sh"] + super().command(args, use_config)
