"""The retransmit scheduler thread: the loop of the sending side.

It sleeps until something happens (events from other threads, another process's commit
to the database, a timer), takes new rows from the intake (intake.py), keeps the lowest
pending rows of each destination in memory, sends them, retransmits on loss or timeout
with capped exponential backoff (outbound.py), and asks the writer to delete rows once
the peer has committed them. Addresses are resolved by addresses.py. A destination never
waits for another: each has its own window, timers and address.
"""

import heapq
import logging
import os
import sqlite3
import time

from tinymqd import events, protocol, store, transport
from tinymqd.addresses import AddressBook
from tinymqd.answers import Answers
from tinymqd.destination import Destinations
from tinymqd.intake import ERROR_ROWS, Intake
from tinymqd.logsetup import fields
from tinymqd.ratelimit import CountingLog
from tinymqd.steering import Steering
from tinymqd.wakeup import Inbox, watch_directory
from tinymqd.worker import Worker

log = logging.getLogger("tinymqd.scheduler")

POLL_INTERVAL_S = 0.001  # how often to look for new rows right after a wake-up (or without inotify)
IDLE_WAKE_S = 1.0  # look anyway this often (a safety net under inotify)
# A writer's WAL write wakes us before its commit is visible (the WAL index is updated
# after the write and fsync), so after a wake-up keep looking for a short while.
AFTER_WAKE_S = 0.1
CANCEL_CHECK_INTERVAL_S = 0.4  # DELETE from mqout stops a delivery within a second
RETRY, PACE = 0, 1  # kinds of timers


class Scheduler(Worker):
    name = "scheduler"
    nice = 5  # yields the CPU to the writer (see Worker._set_priority)

    def __init__(self, stopping, cfg, origin, sender, family, writer, peer_keys):
        super().__init__(stopping)
        self.cfg = cfg
        self.origin = origin  # our node, run and datagram counter (protocol.Origin)
        self.peer_keys = peer_keys
        self.sender = sender
        self.family = family
        self.writer = writer
        self.inbox = Inbox()
        self.chunk = protocol.chunk_size(cfg.max_datagram)
        self.destinations = Destinations(self.chunk)
        self.dirty = set()  # destinations that may have something to load or send
        self.timers = []  # heap of (deadline, stream id, RETRY or PACE)
        self.addresses = AddressBook(family, self.inbox, self._show_error)
        self.failures = CountingLog(log, "events that failed to be handled")
        self.steering = Steering(self)
        self.answers = Answers(self)
        self.handlers = {
            events.AckArrived: self.answers.on_ack,
            events.HelloArrived: self.answers.on_hello,
            events.PeerHeard: self.answers.on_heard,
            events.AddressResolved: self._on_resolved,
            events.RowsRenumbered: lambda e: self._found(self.intake.on_renumbered(e.xs)),
            events.OldRowsNumbered: lambda e: self._found(self.intake.on_old_rows_numbered(
                e.after, e.upto, e.last, time.monotonic())),
            events.Request: self.steering.on_request,
            events.Reconfigured: lambda e: self.steering.reconfigure(e.cfg, e.peer_keys),
        }

    # -- the loop -------------------------------------------------------------

    def loop(self):
        db = store.connect(self.cfg.database, readonly=True)
        self.intake = Intake(db, self.writer, self.inbox, self.cfg.max_message)
        # SQLite keeps the WAL beside the real file, also when the path is a symlink.
        watch = watch_directory(os.path.dirname(os.path.realpath(self.cfg.database)))
        try:
            self._restore()
            self.steering.load_holds()
            self._run(watch)
        except sqlite3.DatabaseError as e:
            raise store.damaged(self.cfg.database, e) from None
        finally:
            self.addresses.close()
            self.inbox.close()
            if watch:
                watch.close()
            db.close()

    def _run(self, watch):
        next_cancel_check = poll_until = 0.0
        while not self.stopping.is_set():
            self.beat()
            now = time.monotonic()
            wait = self._sleep_time(now, watch and now > poll_until)
            if wait > 0 and self.inbox.wait(wait, watch and watch.fileno()):
                watch.clear()
                poll_until = time.monotonic() + AFTER_WAKE_S
            self._handle_events()
            now = time.monotonic()
            self._found(self.intake.poll())
            if now >= next_cancel_check:
                next_cancel_check = now + CANCEL_CHECK_INTERVAL_S
                self._check_cancelled(now)
            old_rows_at = self.intake.old_rows_due_at()
            if old_rows_at is not None and now >= old_rows_at:
                self.intake.number_old_rows()
            if self.intake.rescan_due(now):
                self._found(self.intake.rescan(now))
                self.steering.load_holds()
                self.addresses.refresh(
                    [d for d in self.destinations.values() if d.rows_waiting()], now)
            self._run_timers(now)
            self._pump(now)

    def _sleep_time(self, now, idle):
        """How long the loop may sleep: until the next timer, or not at all when work
        waits; a short poll right after a wake-up (or without inotify)."""
        if self.dirty or self.intake.behind:
            return 0
        wait = IDLE_WAKE_S if idle else POLL_INTERVAL_S
        if self.timers:
            wait = min(wait, self.timers[0][0] - now)
        old_rows_at = self.intake.old_rows_due_at()
        if old_rows_at is not None:
            wait = min(wait, old_rows_at - now)
        return wait

    def _handle_events(self):
        handlers = self.handlers
        for event in self.inbox.get_all():
            try:
                handlers[type(event)](event)
            except Exception as e:  # noqa: BLE001 - one event never ends the thread
                self.failures.count(f"{type(event).__name__}: {type(e).__name__}: {e}")

    # -- destinations and their rows ----------------------------------------------------

    def _restore(self):
        for stream_id, host, port, next_seq, node, open_, lowest in self.intake.streams():
            dest = self.destinations.add(stream_id, host, port, next_seq, node, open_)
            dest.stream.load_from = next_seq if lowest is None else lowest
            if lowest is not None:
                self._need_address(dest)
                self.dirty.add(dest)

    def _found(self, found):
        """Rows were numbered up to found[stream id] - 1: send them."""
        for stream_id, upto in found.items():
            dest = self.destinations.get(stream_id) or self.destinations.learn(
                stream_id, self.intake)
            if dest is None or upto <= dest.assigned:
                continue
            dest.assigned = upto
            self._need_address(dest)
            if dest.error_shown and dest.assigned - 1 < dest.stream.base + ERROR_ROWS:
                self._show_error(dest, dest.error_shown, force=True)  # new rows among the first
            self.dirty.add(dest)

    def _show_error(self, dest, text, force=False):
        if text == dest.error_shown and not force:
            return
        dest.error_shown = text
        self.intake.show_stream_error(dest.id, dest.stream.base, text)

    # -- addresses ------------------------------------------------------------------------

    def _need_address(self, dest):
        if self.addresses.need(dest):
            self.address_set(dest)

    def _on_resolved(self, event):
        dest = self.destinations.get(event.destination)
        if dest is not None and self.addresses.on_resolved(dest, event.future):
            self.address_set(dest)
            self.dirty.update(self.destinations.of_target(dest))

    def address_set(self, dest):
        ep = dest.endpoint
        addr = ep.addr
        ep.choose_keys(self.peer_keys)
        if ep.key is None and self.cfg.keys_required:
            self._show_error(dest, f"no key for {ep.name} in peers, and require_key is set: "
                                   f"add it to peers in {self.cfg.source}")
        if transport.reaches_us(addr, self.cfg.bind, self.cfg.port, self.family):
            # Sending to ourselves: name our own node as the destination, since a DATA
            # datagram of ours for another node coming back to us is a reflection.
            for each in self.destinations.of_target(dest):
                each.stream.expect_peer(self.origin.node)

    # -- sending ---------------------------------------------------------------

    def _pump(self, now):
        if not self.dirty:
            return
        dirty, self.dirty = self.dirty, set()
        for dest in dirty:
            ep = dest.endpoint
            if ep.addr is None or dest.id not in self.destinations or (
                    ep.key is None and self.cfg.keys_required):
                continue
            if not self.destinations.may_send(dest) or self.steering.held(dest):
                continue  # an older stream to the same destination goes first; held
            st = dest.stream
            if dest.may_load():
                dest.load(self.intake)
            self._send(dest, now)
            self.queue_timer(dest)
            if len(st.sent) < st.cc.cwnd and not st.has_work() and dest.may_load():
                self.dirty.add(dest)  # the window has room and rows wait in the database
            self.retire_if_done(dest)

    def retire_if_done(self, dest):
        following = self.destinations.retire_if_done(dest)
        if following is not None:
            self._need_address(following)
            self.dirty.add(following)

    def _send(self, dest, now):
        ep, st, send = dest.endpoint, dest.stream, self.sender.send
        addr, cookie, key = ep.addr, ep.cookie, ep.key and ep.key[1]
        origin, limit = self.origin, self.cfg.max_datagram
        while st.can_send():
            if not st.may_send_at(now):
                heapq.heappush(self.timers, (st.cc.pace_at, dest.id, PACE))
                break
            packet = st.build_packet(limit, origin, cookie, key)
            if packet is None:
                break
            pn, datagram, frames = packet
            send(datagram, addr)  # a failure is a lost packet: the timer resends it
            st.record_sent(pn, frames, now)

    def queue_timer(self, dest):
        timer = dest.stream.timer
        if timer is not None and timer != dest.timer_queued:
            dest.timer_queued = timer
            heapq.heappush(self.timers, (timer, dest.id, RETRY))

    def _run_timers(self, now):
        timers = self.timers
        while timers and timers[0][0] <= now:
            deadline, stream_id, kind = heapq.heappop(timers)
            dest = self.destinations.get(stream_id)
            if dest is None:
                continue  # retired
            if kind == PACE:
                self.dirty.add(dest)
                continue
            if dest.stream.timer != deadline:
                continue  # superseded
            dest.timer_queued = None
            if dest.stream.on_timeout(now, self.cfg.retry_max):
                self.addresses.unreachable(dest, dest.stream.waiting_since, now,
                                           self.cfg.retry_max)
            if dest.stream.unreachable and self.addresses.try_next(dest):
                self.address_set(dest)
            # A retry may come long after the last look: never resend a deleted row.
            self._forget_deleted(dest)
            self.dirty.add(dest)

    def wake(self, dest, now):
        """The peer is alive: retry at once (never a deleted row)."""
        self._forget_deleted(dest)
        dest.stream.wake(now)
        self.queue_timer(dest)
        self.dirty.add(dest)

    # -- cancelled rows ---------------------------------------------------------------------

    def _check_cancelled(self, now):
        """Forget messages whose rows were deleted from mqout (DELETE cancels), and
        resend a first message the peer holds but never commits (it lost it)."""
        for dest in self.destinations.values():
            if not dest.stream.messages:
                continue
            self._forget_deleted(dest)
            if dest.stalled_too_long(now):
                dest.stream.peer_restarted()
                self.dirty.add(dest)

    def _forget_deleted(self, dest):
        st = dest.stream
        gone = self.intake.deleted(dest.id, st.messages.keys())
        if gone:
            st.cancel(gone)
            log.info("%d message(s) to %s cancelled (deleted from mqout)",
                     len(gone), dest.name, extra=fields(peer=dest.name, stream=dest.id))
            self.dirty.add(dest)
