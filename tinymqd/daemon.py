"""Wiring: open the database and socket, start the workers, talk to systemd, stop cleanly.

The main thread owns signals and sd_notify: READY=1 only once the socket is bound, the
database is ready and every worker runs; STATUS= every few seconds; WATCHDOG=1 only while
every worker shows signs of life; STOPPING=1 on the way out.
"""

import itertools
import logging
import os
import secrets
import signal
import sqlite3
import sys
import threading
import time

import sdnotify

from tinymqd import (__version__, control, events, logsetup, protocol, sealing, store,
                     transport)
from tinymqd.gate import Gate
from tinymqd.inbound import Inbound
from tinymqd.receiver import Receiver
from tinymqd.reloading import Reloading
from tinymqd.scheduler import Scheduler
from tinymqd.writer import Writer

log = logging.getLogger("tinymqd")

STATUS_INTERVAL_S = 5.0
STOP_DEADLINE_S = 1.5  # for the workers to finish (the promise is 2 s)
START_DEADLINE_S = 10.0  # for every worker to report that it runs
HEARTBEAT_LIMIT_S = 10.0  # a worker silent this long is stuck: stop feeding the watchdog
SUPERVISE_INTERVAL_S = 1.0  # how often the main thread looks at the workers
HELLO_WITHIN_DAYS = 30  # peers that sent to us within this many days hear we are back
PEERS_REFRESH_S = 60.0  # host names in `peers` are looked up again this often
SWITCH_INTERVAL_S = 0.0002
RUN_ID_BITS = 63  # a random id per run: the value peers echo (see docs/PROTOCOL.md)
ASK_TIMEOUT_S = 2.0  # for the sending thread to answer the control socket


class Daemon:
    def __init__(self, cfg, load_config=None):
        self.cfg = cfg
        self.load_config = load_config  # reads the configuration again (SIGHUP)
        self.stopping = threading.Event()
        self.reload_wanted = False  # SIGHUP (the handler only sets it)
        self.reloading = Reloading(self)
        self.started = time.time()
        self.notifier = sdnotify.SystemdNotifier()

    def run(self):
        # The writer thread gives up the GIL inside SQLite for every row; with the default
        # 5 ms switch interval a busy scheduler thread makes it wait that long each time.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        logsetup.setup(self.cfg.log_level)
        try:
            self.claim = store.claim(self.cfg.database)  # held (open) until we exit
            identity = store.initialize(self.cfg.database, new_run=True)
            sock = transport.open_socket(self.cfg.bind, self.cfg.port)
        except (store.StoreError, transport.BindError) as e:
            log.error("%s", e)
            if logsetup.stderr_is_journal():
                logsetup.fatal(str(e))
            return getattr(e, "exit_status", 1)
        if identity.previous is not None:
            log.warning("database %s was copied or restored (it was bound to another host "
                        "or file): this node is %016x now, was %016x; queued rows keep their "
                        "numbers and are delivered once", self.cfg.database, identity.node,
                        identity.previous, extra=logsetup.fields(node=identity.node))
        try:
            return self._serve(identity.node, sock)
        finally:
            sock.close()

    def _serve(self, node, sock):
        cfg = self.cfg
        self.node = node
        self.sock = sock
        run = secrets.randbits(RUN_ID_BITS) or 1
        self.origin = protocol.Origin(cfg.port, node, run, itertools.count(1),
                                      sealing.Sessions())
        self.sender = transport.Sender(sock)
        self.peer_keys = cfg.peer_keys()
        self.peer_keys.refresh()
        self.gate = Gate(self.origin, self.peer_keys, cfg.keys_required, cfg.allow)
        writer = Writer(cfg.database, self.stopping)
        scheduler = Scheduler(self.stopping, cfg, self.origin, self.sender, sock.family,
                              writer, self.peer_keys)
        inbound = Inbound(self.origin, writer, self.sender.send,
                          store.StoredUpto(cfg.database), cfg.max_message, cfg.keys)
        receiver = Receiver(self.stopping, sock, self.origin, self.sender, self.gate,
                            inbound, scheduler.inbox)
        self.workers = [writer, scheduler, receiver]
        self.writer, self.scheduler, self.inbound, self.receiver = (
            writer, scheduler, inbound, receiver)
        control = self._control()
        if control is not None:
            self.workers.append(control)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_wanted", True))
        for worker in self.workers:
            worker.start()
        deadline = time.monotonic() + START_DEADLINE_S
        for worker in self.workers:
            if not worker.started_ok.wait(max(0.0, deadline - time.monotonic())):
                log.critical("%s thread did not start within %.0f s; exiting", worker.name,
                             START_DEADLINE_S)
                return self._stop(1)
        if self._failed():
            return self._stop(self._failure_status())
        address = sock.getsockname()
        log.info("tinymqd %s started: node %016x, listening on UDP [%s]:%d, database %s, "
                 "config %s", __version__, node, address[0], address[1], cfg.database,
                 cfg.source, extra=logsetup.fields(node=node))
        self._announce()
        self.notifier.notify("READY=1\nSTATUS=" + self.status_line())
        return self._supervise()

    def _announce(self):
        """Tell the peers that sent to us before that we are back: they resume at once.
        Each HELLO names the peer's stream, so the peer can tell it from a forgery."""
        try:
            peers = store.recent_senders(self.cfg.database, HELLO_WITHIN_DAYS)
        except sqlite3.Error as e:
            log.warning("cannot read known peers to announce ourselves: %s", e)
            return
        for stream, host, port in peers:
            try:
                addr = transport.resolve(host, port, self.sock.family)
            except (OSError, TypeError, ValueError):
                continue
            keys = self.gate.keys_for(addr[0])
            if self.cfg.keys_required and not keys:
                continue
            self.sender.send(protocol.encode_hello(self.origin, 0, stream,
                                                   self.gate.cookie(addr),
                                                   keys[0][1] if keys else None), addr)

    def _supervise(self):
        watchdog = _watchdog_interval()
        next_status = time.monotonic() + STATUS_INTERVAL_S
        next_peers = time.monotonic() + PEERS_REFRESH_S
        stuck_logged = False
        while not self.stopping.wait(min(SUPERVISE_INTERVAL_S,
                                         watchdog or SUPERVISE_INTERVAL_S)):
            if self._failed():
                return self._stop(self._failure_status())
            now = time.monotonic()
            stuck = [w.name for w in self.workers if now - w.heartbeat > HEARTBEAT_LIMIT_S]
            if watchdog:
                if not stuck:
                    self.notifier.notify("WATCHDOG=1")
                    stuck_logged = False
                elif not stuck_logged:
                    log.error("worker(s) %s not responding; no longer feeding the watchdog",
                              ", ".join(stuck))
                    stuck_logged = True
            if self.reload_wanted:
                self.reload_wanted = False
                self.reloading.reload()
            if now >= next_peers and self.peer_keys.by_name:
                next_peers = now + PEERS_REFRESH_S
                threading.Thread(target=self.refresh_peers, name="peers", daemon=True).start()
            if now >= next_status:
                next_status = now + STATUS_INTERVAL_S
                self.notifier.notify("STATUS=" + self.status_line())
        return self._stop(0)

    # -- the control socket (tinymq status, flush, hold) --------------------------------

    def _control(self):
        """The control socket's thread, or None (then `tinymq status` shows what the
        database alone can tell)."""
        path = self.cfg.control_socket
        try:
            sock = control.bind(path)
        except control.ControlError as e:
            log.warning("no control socket: %s; `tinymq status` shows database figures "
                        "only, `tinymq flush` does not work", e)
            return None
        return control.Control(self.stopping, sock, path, {
            "status": self._status_request,
            "flush": lambda r: {"destinations": self._ask("flush", r.get("host"),
                                                          r.get("port"))},
            "holds": lambda r: {"held": self._ask("holds")},
            "reload": self.reloading.request,
        })

    def _ask(self, what, host=None, port=None):
        """Ask the scheduler (on its thread) and wait for the answer."""
        if host is not None and not isinstance(host, str) or \
                port is not None and (not isinstance(port, int) or isinstance(port, bool)):
            raise control.RequestError("host must be a string and port an integer")
        reply = events.Reply()
        self.scheduler.inbox.put(events.Request(what, host, port, reply))
        answer = reply.wait(ASK_TIMEOUT_S)
        if answer is None:
            raise control.RequestError("the sending thread did not answer in time")
        return answer

    def _status_request(self, _request):
        now = time.time()
        address = self.sock.getsockname()
        return {"daemon": {"pid": os.getpid(), "started": self.started,
                           "uptime_s": round(now - self.started, 1),
                           "node": f"{self.node:016x}", "address": address[0],
                           "port": address[1], "version": __version__,
                           "database": self.cfg.database, "config": self.cfg.source},
                "destinations": self._ask("status"),
                "senders": self.inbound.senders(time.monotonic())}

    def refresh_peers(self):
        """Look up the host names in `peers` again (their addresses may move)."""
        self.peer_keys.refresh()
        self.gate.refresh_keys()

    def _failed(self):
        failed = [w for w in self.workers if w.failure is not None or not w.is_alive()]
        if failed and not self.stopping.is_set():
            for w in failed:
                if getattr(w.failure, "exit_status", None) is None:  # else it said why
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
        deadline = time.monotonic() + STOP_DEADLINE_S
        self.receiver.join(max(0.0, deadline - time.monotonic()))
        self.scheduler.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers[3:]:  # the control socket
            worker.join(max(0.0, deadline - time.monotonic()))
        self.writer.stop()
        self.writer.join(max(0.0, deadline - time.monotonic()))
        if code == 0:
            log.info("stopped")
        return code

    def status_line(self):
        figures = self.scheduler.destinations.figures()
        text = (f"sending to {figures['destinations']} destination(s)"
                f" ({figures['unreachable']} unreachable), {figures['in_memory']} in flight;"
                f" received {self.inbound.committed_messages};"
                f" {self.sender.errors} send error(s);"
                f" {self.receiver.dropped.total} bad datagram(s) dropped")
        return text.encode("latin-1", "replace").decode("latin-1")


def _watchdog_interval():
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
