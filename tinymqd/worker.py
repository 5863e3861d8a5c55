"""A worker thread that reports its liveness and takes the daemon down if it dies."""

import logging
import os
import threading
import time

log = logging.getLogger("tinymqd")


class Worker(threading.Thread):
    """Subclasses implement loop(); it returns when `stopping` is set.

    An exception escaping loop() is logged and recorded in `failure`; the daemon's main
    thread sees it and exits non-zero rather than running half-alive. An exception with
    an `exit_status` is an expected failure (e.g. a damaged database): its message is
    the one line logged, without a traceback, and the daemon exits with that status.
    """

    name = "worker"
    nice = 0

    def __init__(self, stopping):
        super().__init__(name=self.name, daemon=True)
        self.stopping = stopping
        self.started_ok = threading.Event()
        self.failure = None
        self.heartbeat = time.monotonic()

    def beat(self):
        self.heartbeat = time.monotonic()
        self.started_ok.set()

    def run(self):
        self._set_priority()
        try:
            self.loop()
        except Exception as e:  # noqa: BLE001 - any escape is fatal for the daemon
            self.failure = e
            if getattr(e, "exit_status", None) is not None:
                log.critical("%s", e)  # says what to do; a traceback would bury it
            else:
                log.critical("%s thread failed: %s", self.name, e, exc_info=True)
        finally:
            self.started_ok.set()

    def loop(self):
        raise NotImplementedError

    def _set_priority(self):
        """A thread with `nice` set runs at that much lower priority and does not preempt
        others when it wakes up (SCHED_BATCH): the writer, at normal priority, then
        rarely loses its CPU while it holds the database lock."""
        if not self.nice:
            return
        tid = threading.get_native_id()
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            # Relative to the process's own: raising nice is always allowed.
            os.setpriority(os.PRIO_PROCESS, tid,
                           min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError as e:  # a sandbox may forbid it: a little slower, nothing more
            log.debug("%s thread keeps its priority: %s", self.name, e)
