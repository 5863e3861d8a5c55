"""A worker thread that reports its liveness and takes the daemon down if it dies."""

import logging
import threading
import time

log = logging.getLogger("tinymqd")


class Worker(threading.Thread):
    """Subclasses implement loop(); it returns when `stopping` is set.

    An exception escaping loop() is logged and recorded in `failure`; the daemon's main
    thread sees it and exits non-zero rather than running half-alive.
    """

    name = "worker"

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
        try:
            self.loop()
        except Exception as e:  # noqa: BLE001 - any escape is fatal for the daemon
            self.failure = e
            log.critical("%s thread failed: %s", self.name, e, exc_info=True)
        finally:
            self.started_ok.set()

    def loop(self):
        raise NotImplementedError
