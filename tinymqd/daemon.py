"""Wiring: open the database and socket, start the workers, talk to systemd, stop cleanly.

The main thread owns signals and sd_notify: READY=1 only once the socket is bound, the
database is ready and every worker runs; STATUS= every few seconds; WATCHDOG=1 only while
every worker shows signs of life; STOPPING=1 on the way out.
"""

import logging
import os
import secrets
import signal
import sqlite3
import sys
import threading
import time

import sdnotify

from tinymqd import __version__, logsetup, protocol, store, transport
from tinymqd.inbound import Inbound
from tinymqd.receiver import Receiver
from tinymqd.scheduler import Scheduler
from tinymqd.writer import Writer

log = logging.getLogger("tinymqd")

STATUS_INTERVAL = 5.0
STOP_DEADLINE = 1.5  # seconds for the workers to finish (the promise is 2 s)
HEARTBEAT_LIMIT = 10.0  # a worker silent this long is stuck: stop feeding the watchdog
HELLO_WITHIN_DAYS = 30
SWITCH_INTERVAL = 0.0002


class Daemon:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stopping = threading.Event()
        self.notifier = sdnotify.SystemdNotifier()

    def run(self):
        # The writer thread gives up the GIL inside SQLite for every row; with the default
        # 5 ms switch interval a busy scheduler thread makes it wait that long each time.
        sys.setswitchinterval(SWITCH_INTERVAL)
        logsetup.setup(self.cfg.log_level)
        try:
            node = store.initialize(self.cfg.database)
            sock = transport.open_socket(self.cfg.bind, self.cfg.port)
        except (store.StoreError, transport.BindError) as e:
            log.error("%s", e)
            if logsetup.stderr_is_journal():
                logsetup.fatal(str(e))
            return 1
        try:
            return self._serve(node, sock)
        finally:
            sock.close()

    def _serve(self, node, sock):
        cfg = self.cfg
        self.node = node
        self.sock = sock
        boot = secrets.randbits(32)
        writer = Writer(cfg.database, self.stopping)
        scheduler = Scheduler(self.stopping, cfg, node, sock, writer, boot)
        inbound = Inbound(node, cfg.port, writer, self._send, _known_senders(cfg.database),
                          boot, cfg.max_message)
        receiver = Receiver(self.stopping, sock, node, inbound, scheduler.inbox)
        self.workers = [writer, scheduler, receiver]
        self.writer, self.scheduler, self.inbound, self.receiver = (
            writer, scheduler, inbound, receiver)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            worker.started_ok.wait(10)
        if self._failed():
            return self._stop(self._failure_status())
        address = sock.getsockname()
        log.info("tinymqd %s started: node %016x, listening on UDP [%s]:%d, database %s, "
                 "config %s", __version__, node, address[0], address[1], cfg.database,
                 cfg.source, extra={"TINYMQ_NODE": f"{node:016x}"})
        self._announce(boot)
        self.notifier.notify("READY=1\nSTATUS=" + self._status())
        return self._supervise()

    def _send(self, datagram, addr):
        try:
            self.sock.sendto(datagram, addr)
        except OSError as e:
            log.debug("send to %s failed: %s", addr[0], e)

    def _announce(self, boot):
        """Tell the peers that sent to us before that we are back: they resume at once."""
        try:
            conn = store.connect(self.cfg.database, readonly=True)
            rows = conn.execute(
                "SELECT DISTINCT sender, shost, sport FROM tinymq_rx "
                "WHERE seen > datetime('now', ?)", (f"-{HELLO_WITHIN_DAYS} days",)).fetchall()
            conn.close()
        except sqlite3.Error as e:
            log.warning("cannot read known peers to announce ourselves: %s", e)
            return
        for sender, shost, sport in rows:
            host = shost.decode() if isinstance(shost, bytes) else shost
            try:
                addr = transport.resolve(host, sport, self.sock.family)
            except (OSError, TypeError, ValueError):
                continue
            self._send(protocol.encode_hello(self.cfg.port, self.node, sender, boot), addr)

    def _supervise(self):
        watchdog = _watchdog_interval()
        next_status = time.monotonic() + STATUS_INTERVAL
        stuck_logged = False
        while not self.stopping.wait(min(1.0, watchdog or 1.0)):
            if self._failed():
                return self._stop(self._failure_status())
            now = time.monotonic()
            stuck = [w.name for w in self.workers if now - w.heartbeat > HEARTBEAT_LIMIT]
            if watchdog:
                if not stuck:
                    self.notifier.notify("WATCHDOG=1")
                    stuck_logged = False
                elif not stuck_logged:
                    log.error("worker(s) %s not responding; no longer feeding the watchdog",
                              ", ".join(stuck))
                    stuck_logged = True
            if now >= next_status:
                next_status = now + STATUS_INTERVAL
                self.notifier.notify("STATUS=" + self._status())
        return self._stop(0)

    def _failed(self):
        failed = [w for w in self.workers if w.failure is not None or not w.is_alive()]
        if failed and not self.stopping.is_set():
            for w in failed:
                log.critical("%s thread stopped unexpectedly (%s); exiting so that the "
                             "service manager restarts tinymqd", w.name,
                             w.failure or "no error")
            return True
        return False

    def _failure_status(self):
        """The exit status for a failed worker: the one its exception names (e.g. a
        damaged database, which restarting cannot fix), else 1 (systemd restarts us)."""
        for w in self.workers:
            status = getattr(w.failure, "exit_status", None)
            if status is not None:
                return status
        return 1

    def _stop(self, code):
        self.notifier.notify("STOPPING=1")
        log.info("stopping")
        self.stopping.set()
        deadline = time.monotonic() + STOP_DEADLINE
        self.receiver.join(max(0.0, deadline - time.monotonic()))
        self.scheduler.join(max(0.0, deadline - time.monotonic()))
        self.writer.stop()
        self.writer.join(max(0.0, deadline - time.monotonic()))
        if code == 0:
            log.info("stopped")
        return code

    def _status(self):
        figures = self.scheduler.figures()
        text = (f"sending to {figures['destinations']} destination(s)"
                f" ({figures['unreachable']} unreachable), {figures['in_memory']} in flight;"
                f" received {self.inbound.committed_messages};"
                f" {self.scheduler.send_errors} send error(s);"
                f" {self.receiver.dropped.total} bad datagram(s) dropped")
        return text.encode("latin-1", "replace").decode("latin-1")


def _known_senders(path):
    conn = store.connect(path, readonly=True)
    try:
        rows = conn.execute("SELECT sender, stream, next_seq FROM tinymq_rx").fetchall()
    finally:
        conn.close()
    return {(sender, stream): next_seq for sender, stream, next_seq in rows}


def _watchdog_interval():
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
