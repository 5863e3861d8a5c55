"""The retransmit scheduler thread: everything on the sending side.

It notices new mqout rows (inotify and PRAGMA data_version, which changes when another
connection commits), finds them numbered (a trigger gives each row its destination
stream and sequence number as it is inserted, see store.TRIGGERS), marks rows that
cannot be sent, streams the lowest pending rows of each destination from the database
into memory, sends, retransmits on loss or timeout with capped exponential backoff, and
asks the writer to delete rows once the peer has committed them. A destination never waits for another: each has its own window, timers
and address resolution.
"""

import concurrent.futures
import datetime
import heapq
import json
import logging
import os
import time

from tinymqd import protocol, store, transport
from tinymqd.outbound import OutMessage, OutStream
from tinymqd.wakeup import Inbox, watch_directory
from tinymqd.worker import Worker

log = logging.getLogger("tinymqd.scheduler")

POLL_INTERVAL = 0.001  # how often to look for new rows right after a wake-up (or without inotify)
IDLE_WAKE = 1.0  # look anyway this often (a safety net under inotify)
# A writer's WAL write wakes us before its commit is visible (the WAL index is updated
# after the write and fsync), so after a wake-up keep looking for a short while.
AFTER_WAKE = 0.1
SCAN_BATCH = 2000
RENUMBER_BATCH = 128  # unnumbered rows looked at, and numbered, per transaction
RENUMBER_PAUSE = 0.01  # between such batches
# Rows from before tinymqd (store.py) are numbered this many per transaction (about
# 0.5 ms in the lock), with a pause between, so applications' INSERTs rarely meet it.
OLD_ROWS_BATCH = 64
OLD_ROWS_PAUSE = 0.004
RESCAN_INTERVAL = 5.0  # look again at rows that could not be sent
CANCEL_CHECK_INTERVAL = 0.4  # DELETE from mqout stops a delivery within a second
RESOLVE_RETRY = (1.0, 60.0)  # first and longest wait before resolving a name again
RERESOLVE_INTERVAL = 60.0
LOAD_BYTES = 8 * 1024 * 1024
LOAD_ROWS = 1000
MAX_LOADED = 32768  # messages of one destination held in memory
ERROR_ROWS = 5000  # first rows of a destination that carry its last_error
MAX_TOKEN = 65535  # bytes

# Sizes are checked where data is read (loading); here only for unnumbered rows, so that
# a row taken out of its stream for its size is not numbered again.
ROW_COLUMNS = ("x, stream, seq, host, port, last_error, CASE WHEN stream IS NULL THEN "
               "length(CAST(data AS BLOB)) END, length(CAST(token AS BLOB))")
NEW_ROWS = f"SELECT {ROW_COLUMNS} FROM mqout WHERE x > ? ORDER BY x LIMIT ?"
UNNUMBERED = f"""
SELECT {ROW_COLUMNS} FROM mqout
WHERE stream IS NULL AND seq IS NULL AND x > ? AND x <= ? ORDER BY x LIMIT ?
"""
ROWS_BETWEEN = f"SELECT {ROW_COLUMNS} FROM mqout WHERE x BETWEEN ? AND ? ORDER BY x"
# Data longer than the limit is not even read (length() of TEXT counts characters, which
# are never more than its bytes, so this never hides a row within the limit).
LOAD = """
SELECT seq, x, typeof(data), CASE WHEN length(data) > ?5 THEN NULL ELSE data END,
       length(data), token, ts FROM mqout
WHERE stream = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq LIMIT ?4
"""
# Rows are named by a JSON list of x: one statement, so the writer holds the lock for a
# single call into SQLite (see writer.py).
ROW_ERROR = ("UPDATE mqout SET last_error = ? "
             "WHERE x IN (SELECT value FROM json_each(?)) AND stream IS NULL")
# Takes a row out of its stream (a gap, like a cancel) and says why.
UNNUMBER = "UPDATE mqout SET stream = NULL, seq = NULL, last_error = ? WHERE x = ?"
# Numbers a row the application fixed (say, shortened its data): the trigger does it.
RENUMBER = ("UPDATE mqout SET host = host "
            "WHERE x IN (SELECT value FROM json_each(?)) AND stream IS NULL")
# A destination's trouble is written to the first ERROR_ROWS rows waiting for it (the ones
# not moving), bounded so that a backlog of a million rows costs no more than a few.
STREAM_ERROR = """
UPDATE mqout SET last_error = ?1
WHERE stream = ?2 AND seq >= ?3 AND seq < ?3 + ?4 AND last_error IS NOT ?1
"""
CLEAR_STREAM_ERROR = """
UPDATE mqout SET last_error = NULL
WHERE stream = ? AND seq < ? AND last_error IS NOT NULL
"""
COUNT_EXISTING = "SELECT count(*) FROM mqout WHERE stream = ? AND seq BETWEEN ? AND ?"
EXISTING = "SELECT seq FROM mqout WHERE stream = ? AND seq BETWEEN ? AND ?"
RETRY, PACE = 0, 1  # kinds of timers
KIND_BY_TYPE = {b"null": protocol.KIND_NULL, b"integer": protocol.KIND_INTEGER,
                b"real": protocol.KIND_REAL, b"text": protocol.KIND_TEXT,
                b"blob": protocol.KIND_BLOB}


class Scheduler(Worker):
    name = "scheduler"
    nice = 5  # yields the CPU to the writer (see Worker._set_priority)

    def __init__(self, stopping, cfg, node, sock, writer, boot):
        super().__init__(stopping)
        self.cfg = cfg
        self.node = node
        self.sock = sock
        self.family = sock.family
        self.writer = writer
        self.inbox = Inbox()
        self.boot = boot  # this run's identity: packet numbers start afresh with it
        self.chunk = protocol.chunk_size(cfg.max_datagram)
        self.streams = {}  # id -> OutStream
        self.dirty = set()  # streams that may have something to load or send
        self.timers = []  # heap of (deadline, stream id, RETRY or PACE)
        self.scan_x = 0  # rows up to here have been looked at
        self.next_rescan = 0.0  # when to look at unnumbered rows again
        self.rescan_after = 0  # ... from the row after this x
        self.old_rows_after = None  # rows from before tinymqd wait for numbers after this x
        self.old_rows_busy = False
        self.old_rows_next = 0.0  # when to number the next chunk of them
        self.data_version = None
        self.resolver = concurrent.futures.ThreadPoolExecutor(4, "resolver")
        self.delivered = 0
        self.send_errors = 0

    # -- the loop -------------------------------------------------------------

    def loop(self):
        self.db = store.connect(self.cfg.database, readonly=True)
        watch = watch_directory(os.path.dirname(os.path.abspath(self.cfg.database)))
        try:
            self._restore()
            next_cancel_check = poll_until = 0.0
            while not self.stopping.is_set():
                self.beat()
                now = time.monotonic()
                wait = IDLE_WAKE if watch and now > poll_until else POLL_INTERVAL
                if self.timers:
                    wait = min(wait, self.timers[0][0] - now)
                if self.old_rows_after is not None and not self.old_rows_busy:
                    wait = min(wait, self.old_rows_next - now)
                if self.dirty or self.data_version is None:
                    wait = 0
                if wait > 0 and self.inbox.wait(wait, watch and watch.fileno()):
                    watch.clear()
                    poll_until = time.monotonic() + AFTER_WAKE
                self._handle_events()
                now = time.monotonic()
                self._poll_mqout()
                if now >= next_cancel_check:
                    next_cancel_check = now + CANCEL_CHECK_INTERVAL
                    self._check_cancelled(now)
                if (self.old_rows_after is not None and not self.old_rows_busy
                        and now >= self.old_rows_next):
                    self._number_old_rows()
                if now >= self.next_rescan:
                    self.next_rescan = now + RESCAN_INTERVAL
                    if self.old_rows_after is None:
                        self._rescan_unnumbered(now)
                    self._refresh_addresses(now)
                self._run_timers(now)
                self._pump(now)
        finally:
            self.resolver.shutdown(wait=False, cancel_futures=True)
            if watch:
                watch.close()
            self.db.close()

    def _handle_events(self):
        for event in self.inbox.get_all():
            getattr(self, "_on_" + event[0])(*event[1:])

    # -- start-up ---------------------------------------------------------------

    def _restore(self):
        rows = self.db.execute("SELECT id, host, port, next_seq FROM tinymq_streams").fetchall()
        for stream_id, host, port, next_seq in rows:
            st = self._add_stream(stream_id, host, port, next_seq)
            (lowest,) = self.db.execute("SELECT min(seq) FROM mqout WHERE stream = ?",
                                        (stream_id,)).fetchone()
            st.load_from = next_seq if lowest is None else lowest
            if lowest is not None:
                self._need_address(st)
                self.dirty.add(st)
        # Numbered rows are covered by the streams' counters; unnumbered ones by the
        # periodic look at them (which runs first thing), or by numbering the rows that
        # were there before tinymqd.
        (self.scan_x,) = self.db.execute("SELECT coalesce(max(x), 0) FROM mqout").fetchone()
        if not store.numbering_ready(self.db):
            self.old_rows_after = 0
            log.info("numbering the rows queued before tinymqd first ran, in the order of x")

    def _add_stream(self, stream_id, host, port, next_seq):
        if isinstance(host, bytes):
            host = host.decode("utf-8", "replace")
        st = OutStream(stream_id, host, port, next_seq, self.chunk)
        self.streams[stream_id] = st
        return st

    # -- new rows ---------------------------------------------------------------------

    def _poll_mqout(self):
        (version,) = self.db.execute("PRAGMA data_version").fetchone()
        if version == self.data_version:
            return
        self.data_version = version
        rows = self.db.execute(NEW_ROWS, (self.scan_x, SCAN_BATCH)).fetchall()
        if rows:
            self.scan_x = rows[-1][0]
            if len(rows) == SCAN_BATCH:
                self.data_version = None  # more to read: look again next round
            self._examine(rows)

    def _examine(self, rows, renumber_allowed=True):
        """Learn the numbered rows' streams; mark or number the others."""
        errors, renumber, touched = {}, [], {}
        for x, stream, seq, host, port, last_error, size, token_size in rows:
            if stream is not None:
                st = self.streams.get(stream) or self._learn_stream(stream)
                if st is not None and seq >= st.assigned:
                    st.assigned = seq + 1
                    touched[stream] = st
                continue
            problem = (_row_problem(host, port)
                       or _size_problem(None, size, token_size, self.cfg.max_message))
            if problem is None:
                if renumber_allowed and self.old_rows_after is None:
                    renumber.append(x)
            elif last_error != problem.encode():
                errors.setdefault(problem, []).append(x)
        for st in touched.values():
            self._need_address(st)
            if st.error_shown and st.assigned - 1 < st.base + ERROR_ROWS:
                self._show_error(st, st.error_shown, force=True)  # new rows among the first
            self.dirty.add(st)
        if errors or renumber:
            def write(conn):
                for problem, xs in errors.items():
                    conn.execute(ROW_ERROR, (problem, json.dumps(xs)))
                if renumber:
                    conn.execute(RENUMBER, (json.dumps(renumber),))

            self.writer.submit(write, (lambda: self.inbox.put(("renumbered", renumber)))
                               if renumber else None)

    def _on_renumbered(self, xs):
        wanted = set(xs)  # one batch of UNNUMBERED: ascending x, read back in one range
        rows = [row for row in self.db.execute(ROWS_BETWEEN, (xs[0], xs[-1]))
                if row[0] in wanted]
        self._examine(rows, renumber_allowed=False)

    def _rescan_unnumbered(self, now):
        """Look at the next batch of unnumbered rows: mark the bad, number the fixed."""
        rows = self.db.execute(UNNUMBERED, (self.rescan_after, self.scan_x,
                                            RENUMBER_BATCH)).fetchall()
        self._examine(rows)
        if len(rows) == RENUMBER_BATCH:  # more of them: the next batch soon
            self.rescan_after = rows[-1][0]
            self.next_rescan = now + RENUMBER_PAUSE
        else:
            self.rescan_after = 0

    def _number_old_rows(self):
        """The next chunk of rows from before tinymqd (store.py); the last one also
        makes new rows numbered as they are inserted."""
        after = self.old_rows_after
        xs = [x for (x,) in self.db.execute(store.OLD_ROWS, (after, OLD_ROWS_BATCH))]
        last = len(xs) < OLD_ROWS_BATCH
        self.old_rows_busy = True

        def done():
            self.inbox.put(("old_rows_numbered", after, xs[-1] if xs else after, last))

        if last:  # all that are left, whatever came since, and the triggers: at once
            self.writer.submit(store.create_numbering_triggers, done,
                               staged={"old_rows": [(after + 1, 1 << 62)]})
        else:
            self.writer.submit(staged={"old_rows": [(xs[0], xs[-1])]}, done=done)

    def _on_old_rows_numbered(self, after, upto, last):
        self.old_rows_busy = False
        self.old_rows_next = time.monotonic() + OLD_ROWS_PAUSE
        if last:
            upto = self.scan_x  # the last transaction numbered all that was left
        # These rows, and the unusable rows among and before them.
        self._examine(self.db.execute(ROWS_BETWEEN, (after + 1, upto)).fetchall(),
                      renumber_allowed=False)
        self.old_rows_after = upto
        if last:
            self.old_rows_after = None
            self.next_rescan = 0.0  # the rows after the last of them
            log.info("the rows queued before tinymqd first ran are numbered; new rows "
                     "are numbered as they are inserted")

    def _learn_stream(self, stream_id):
        """A destination first seen in a new row (the trigger made its stream)."""
        row = self.db.execute("SELECT host, port FROM tinymq_streams WHERE id = ?",
                              (stream_id,)).fetchone()
        if row is None:
            return None
        st = self._add_stream(stream_id, row[0], row[1], 1)
        st.load_from = 1
        return st

    # -- addresses ------------------------------------------------------------------

    def _need_address(self, st):
        if st.addr is not None or st.resolving:
            return
        literal = transport.literal_address(st.host)
        if literal is not None:
            try:
                self._set_address(st, transport.resolve(st.host, st.port, self.family))
            except OSError as e:
                self._unresolved(st, str(e))
            return
        st.resolving = True
        future = self.resolver.submit(transport.resolve, st.host, st.port, self.family)
        future.add_done_callback(lambda f, i=st.id: self.inbox.put(("resolved", i, f)))

    def _on_resolved(self, stream_id, future):
        st = self.streams[stream_id]
        st.resolving = False
        try:
            addr = future.result()
        except concurrent.futures.CancelledError:
            return
        except (OSError, UnicodeError) as e:
            self._unresolved(st, getattr(e, "strerror", None) or str(e))
            return
        if st.resolve_error:
            log.info("host %s resolves again (%s)", st.name, addr[0],
                     extra={"PEER": st.name})
            st.resolve_error = None
            self._show_error(st, None)
        elif st.addr is not None and st.addr[:2] != addr[:2]:
            log.info("destination %s moved from %s to %s", st.name, st.addr[0], addr[0],
                     extra={"PEER": st.name})
        self._set_address(st, addr)
        st.next_resolve = time.monotonic() + RERESOLVE_INTERVAL
        self.dirty.add(st)

    def _set_address(self, st, addr):
        st.addr = addr
        if addr[1] == self.cfg.port and transport.is_local(addr, self.family):
            # Sending to ourselves: name our own node as the destination, since a DATA
            # datagram from our node to another one coming back to us is a reflection.
            st.peer_node = self.node

    def _unresolved(self, st, reason):
        wait = RESOLVE_RETRY[0] if st.resolve_error is None else min(
            RESOLVE_RETRY[1], 2 * max(RESOLVE_RETRY[0], st.next_resolve_wait))
        st.next_resolve_wait = wait
        st.next_resolve = time.monotonic() + wait
        if st.resolve_error is None and st.addr is None:
            log.warning("cannot resolve destination %s: %s; rows wait and it is tried again",
                        st.name, reason, extra={"PEER": st.name})
        st.resolve_error = reason
        if st.addr is None:
            self._show_error(st, f"host {st.host!r} does not resolve ({reason}); retrying")

    def _refresh_addresses(self, now):
        for st in self.streams.values():
            if st.messages or st.load_from is not None and st.load_from < st.assigned:
                if not st.resolving and st.next_resolve <= now and (
                        st.addr is None or transport.literal_address(st.host) is None):
                    if st.addr is None:
                        self._need_address(st)
                    else:
                        st.resolving = True
                        future = self.resolver.submit(transport.resolve, st.host, st.port,
                                                      self.family)
                        future.add_done_callback(
                            lambda f, i=st.id: self.inbox.put(("resolved", i, f)))

    # -- last_error for a whole destination -----------------------------------------------

    def _show_error(self, st, text, force=False):
        if text == st.error_shown and not force:
            return
        st.error_shown = text
        # The first waiting rows: those from the lowest pending sequence number on. Rows
        # marked earlier lie below base + ERROR_ROWS too (base only moves up).
        stream_id, base = st.id, st.base
        if text is None:
            self.writer.submit(lambda c: c.execute(CLEAR_STREAM_ERROR,
                                                   (stream_id, base + ERROR_ROWS)))
        else:
            self.writer.submit(lambda c: c.execute(STREAM_ERROR,
                                                   (text, stream_id, base, ERROR_ROWS)))

    # -- loading and sending ---------------------------------------------------------------

    @staticmethod
    def _load_room(st):
        return min(MAX_LOADED, max(64, 16 * int(st.cwnd))) - len(st.messages)

    def _may_load(self, st):
        return (st.load_from is not None and st.load_from < st.assigned
                and self._load_room(st) > 0 and st.loaded_bytes < LOAD_BYTES)

    def _load(self, st):
        """Read the next pending rows of a destination into memory, within a budget."""
        want = self._load_room(st)
        limit = min(want, LOAD_ROWS)
        max_message = self.cfg.max_message
        cursor = self.db.execute(LOAD, (st.id, st.load_from, st.assigned, limit, max_message))
        rows, too_large = 0, []
        try:
            for seq, x, kind, data, length, token, ts in cursor:
                st.load_from = seq + 1
                rows += 1
                problem = _size_problem(data, length, token, max_message)
                if problem:
                    too_large.append((problem, x))  # out of the stream: it blocks nobody
                    continue
                st.add(OutMessage(seq, x, _encode(kind, data, token, ts), self.chunk))
                if st.loaded_bytes >= LOAD_BYTES:
                    break
            else:
                if rows < limit:
                    st.load_from = st.assigned  # no other row below it is pending
        finally:
            cursor.close()  # ends the read transaction, so checkpoints can proceed
        if too_large:
            self.writer.submit(lambda conn: conn.executemany(UNNUMBER, too_large))

    def _pump(self, now):
        if not self.dirty:
            return
        dirty, self.dirty = self.dirty, set()
        for st in dirty:
            if st.addr is None:
                continue
            if self._may_load(st):
                self._load(st)
            self._send(st, now)
            self._queue_timer(st)
            if len(st.sent) < st.cwnd and not st.has_work() and self._may_load(st):
                self.dirty.add(st)  # the window has room and rows wait in the database

    def _send(self, st, now):
        sendto = self.sock.sendto
        port, node, limit = self.cfg.port, self.node, self.cfg.max_datagram
        while st.can_send():
            if not st.may_send_at(now):
                heapq.heappush(self.timers, (st.pace_at, st.id, PACE))
                break
            packet = st.build_packet(limit, port, node, self.boot)
            if packet is None:
                break
            pn, datagram, frames = packet
            try:
                sendto(datagram, st.addr)
            except OSError as e:
                # Counted as a lost packet: the retransmission timer takes care of it.
                self.send_errors += 1
                log.debug("send to %s failed: %s", st.name, e)
            st.record_sent(pn, frames, now)

    def _queue_timer(self, st):
        if st.timer is not None and st.timer != st.timer_queued:
            st.timer_queued = st.timer
            heapq.heappush(self.timers, (st.timer, st.id, RETRY))

    def _run_timers(self, now):
        timers = self.timers
        while timers and timers[0][0] <= now:
            deadline, stream_id, kind = heapq.heappop(timers)
            st = self.streams[stream_id]
            if kind == PACE:
                self.dirty.add(st)
                continue
            if st.timer != deadline:
                continue  # superseded
            st.timer_queued = None
            if st.on_timeout(now, self.cfg.retry_max):
                self._went_unreachable(st, now)
            # A retry may come long after the last look: never resend a deleted row.
            self._forget_deleted(st)
            self.dirty.add(st)

    # -- what peers tell us ----------------------------------------------------------------

    def _on_ack(self, ack, addr):
        st = self.streams.get(ack.stream)
        if st is None or not (transport.same_endpoint(addr, st.addr)
                              or (st.peer_node and ack.header.src == st.peer_node)):
            return
        if ack.committed > st.assigned:
            return  # it cannot have what we never numbered: not an answer to us
        now = time.monotonic()
        if st.unreachable:
            st.unreachable = False
            log.info("destination %s is back", st.name, extra={"PEER": st.name})
            self._show_error(st, None)
        committed = st.on_ack(ack, now, self.cfg.retry_max)
        if committed is not None:
            # Coalesced in the writer: one DELETE per destination and transaction.
            self.writer.submit(staged={"delete": [(st.id, committed)]})
        self._queue_timer(st)
        self.dirty.add(st)

    def _on_hello(self, hello, addr):
        now = time.monotonic()
        for st in self._streams_of(hello.header.src, addr[0], hello.header.port):
            if st.peer_node and st.peer_node != hello.header.src:
                log.warning("destination %s is another node now (%016x, was %016x; its "
                            "database replaced?): resending what it had not committed",
                            st.name, hello.header.src, st.peer_node, extra={"PEER": st.name})
                st.peer_node = hello.header.src
                st.peer_boot = hello.boot
                st.peer_restarted()
            elif st.peer_boot is not None and st.peer_boot != hello.boot:
                st.peer_restarted()
                st.peer_boot = hello.boot
            self._forget_deleted(st)
            st.wake(now)
            self._queue_timer(st)
            self.dirty.add(st)

    def _on_heard(self, node, ip, port):
        now = time.monotonic()
        for st in self._streams_of(node, ip, port):
            if st.backoff > 1.0 or st.unreachable:
                self._forget_deleted(st)
                st.wake(now)
                self._queue_timer(st)
                self.dirty.add(st)

    def _streams_of(self, node, ip, port):
        for st in self.streams.values():
            if (st.peer_node and st.peer_node == node) or (
                    st.addr is not None and st.addr[0] == ip and st.port == port):
                yield st

    def _went_unreachable(self, st, now):
        since = datetime.datetime.now().astimezone() - datetime.timedelta(
            seconds=now - st.waiting_since)
        log.warning("destination %s is not answering; retrying every %.1f s",
                    st.name, self.cfg.retry_max, extra={"PEER": st.name})
        self._show_error(st, f"no answer from {st.name} since "
                             f"{since:%Y-%m-%d %H:%M:%S %z}; retrying")

    # -- cancelled rows ---------------------------------------------------------------------

    def _check_cancelled(self, now):
        """Forget messages whose rows were deleted from mqout (DELETE cancels)."""
        for st in self.streams.values():
            if not st.messages:
                continue
            self._forget_deleted(st)
            if st.stalled():
                if st.stall_since is None:
                    st.stall_since = now
                elif now - st.stall_since > max(1.0, 4 * (st.srtt or 0.25)) * st.backoff:
                    st.stall_since = None
                    st.peer_restarted()
                    self.dirty.add(st)
            else:
                st.stall_since = None

    def _forget_deleted(self, st):
        seqs = st.messages.keys()
        if not seqs:
            return
        first, last = next(iter(seqs)), next(reversed(seqs))
        (count,) = self.db.execute(COUNT_EXISTING, (st.id, first, last)).fetchone()
        if count == len(seqs):  # the cheap test: no row in the range is gone
            return
        present = {row[0] for row in self.db.execute(EXISTING, (st.id, first, last))}
        gone = [seq for seq in seqs if seq not in present]
        if gone:
            st.cancel(gone)
            log.info("%d message(s) to %s cancelled (deleted from mqout)",
                     len(gone), st.name, extra={"PEER": st.name})
            self.dirty.add(st)

    # -- figures for STATUS ------------------------------------------------------------------

    def figures(self):
        waiting = [st for st in list(self.streams.values()) if st.messages]
        return {
            "destinations": len(waiting),
            "unreachable": sum(1 for st in waiting if st.unreachable or st.resolve_error),
            "in_memory": sum(len(st.messages) for st in waiting),
        }


def _row_problem(host, port):
    """Why a row cannot be sent, in the words of its last_error; None if it can. The same
    rules as the numbering trigger's (store.TRIGGERS)."""
    if isinstance(host, bytes):
        try:
            host = host.decode("utf-8")
        except UnicodeDecodeError:
            return "host is not valid UTF-8 text"
    if not isinstance(host, str) or not host.strip(" []"):
        return "host is empty: set it to a name or an IP address"
    if isinstance(port, bytes):
        return f"port {port.decode('utf-8', 'replace')!r} is not a number from 1 to 65535"
    if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def _size_problem(data, length, token, max_message):
    size = len(data) if isinstance(data, bytes) else length  # NULL here: over the limit
    if size is not None and size > max_message:
        return f"data is {size} bytes or more, larger than max_message ({max_message} bytes)"
    token_size = len(token) if isinstance(token, bytes) else token
    if isinstance(token_size, int) and token_size > MAX_TOKEN:
        return f"token is {token_size} bytes, larger than {MAX_TOKEN} bytes"
    return None


def _encode(kind, data, token, ts):
    kind = KIND_BY_TYPE.get(kind, protocol.KIND_BLOB)
    if kind in (protocol.KIND_INTEGER, protocol.KIND_REAL):
        data = repr(data).encode()
    elif data is None:
        data = b""
    if token is not None and not isinstance(token, bytes):
        token = str(token).encode()
    sent = ts if isinstance(ts, bytes) else (b"" if ts is None else str(ts).encode())
    return protocol.encode_message(kind, token, sent, data)
