"""Rows of mqout for the scheduler: notices new rows, marks those that cannot be sent,
numbers the rows that predate tinymqd, and reads a stream's pending rows as messages.

A trigger gives every row its destination stream and sequence number as it is inserted
(store.TRIGGERS). This module only reads the database, on the scheduler's read-only
connection; what it changes goes through the writer, and the writer's confirmations come
back as events (events.RowsRenumbered, events.OldRowsNumbered).
"""

import json
import logging

from tinymqd import events, protocol, store
from tinymqd.constants import MAX_TOKEN_BYTES

log = logging.getLogger("tinymqd.scheduler")

SCAN_BATCH = 2000  # new rows looked at per poll
RENUMBER_BATCH = 128  # unnumbered rows looked at, and numbered, per transaction
RENUMBER_PAUSE_S = 0.01  # between such batches
# Rows from before tinymqd (store.py) are numbered this many per transaction (about
# 0.5 ms in the lock), with a pause between, so applications' INSERTs rarely meet it.
OLD_ROWS_BATCH = 64
OLD_ROWS_PAUSE_S = 0.004
RESCAN_INTERVAL_S = 5.0  # look again at rows that could not be sent
ERROR_ROWS = 5000  # first rows of a destination that carry its last_error
LAST_X = (1 << 63) - 1  # SQLite's largest rowid: "every row after this one"

# Sizes are checked where data is read (loading); here only for unnumbered rows, so that
# a row taken out of its stream for its size is not numbered again.
ROW_COLUMNS = (f"x, stream, seq, last_error, {store.row_problem('mqout')}, CASE WHEN stream "
               f"IS NULL THEN length(CAST(data AS BLOB)) END, length(CAST(token AS BLOB))")
NEW_ROWS = f"SELECT {ROW_COLUMNS} FROM mqout WHERE x > ? ORDER BY x LIMIT ?"
UNNUMBERED = f"""
SELECT {ROW_COLUMNS} FROM mqout
WHERE stream IS NULL AND seq IS NULL AND x > ? AND x <= ? ORDER BY x LIMIT ?
"""
ROWS_BETWEEN = f"SELECT {ROW_COLUMNS} FROM mqout WHERE x BETWEEN ? AND ? ORDER BY x"
STREAMS = "SELECT id, host, port, next_seq FROM tinymq_streams"
STREAM = "SELECT host, port FROM tinymq_streams WHERE id = ?"
LOWEST_PENDING = "SELECT min(seq) FROM mqout WHERE stream = ?"
LAST_ROW = "SELECT coalesce(max(x), 0) FROM mqout"
COUNT_EXISTING = "SELECT count(*) FROM mqout WHERE stream = ? AND seq BETWEEN ? AND ?"
EXISTING = "SELECT seq FROM mqout WHERE stream = ? AND seq BETWEEN ? AND ?"
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
KIND_BY_TYPE = {b"null": protocol.KIND_NULL, b"integer": protocol.KIND_INTEGER,
                b"real": protocol.KIND_REAL, b"text": protocol.KIND_TEXT,
                b"blob": protocol.KIND_BLOB}


class Intake:
    """Owned by the scheduler thread. Methods that find numbered rows return
    {stream id: highest sequence number found + 1}."""

    def __init__(self, db, writer, inbox, max_message):
        self.db = db
        self.writer = writer
        self.inbox = inbox
        self.max_message = max_message
        self.scan_x = 0  # rows up to here have been looked at
        self.data_version = None  # of the database when last looked (None: look now)
        self.next_rescan = 0.0  # when to look at unnumbered rows again
        self.rescan_after = 0  # ... from the row after this x
        self.old_rows_after = None  # rows from before tinymqd wait for numbers after this x
        self.old_rows_busy = False
        self.old_rows_next = 0.0  # when to number the next chunk of them

    # -- start-up --------------------------------------------------------------------

    def streams(self):
        """(id, host, port, next_seq, lowest pending seq or None) of every stream."""
        rows = self.db.execute(STREAMS).fetchall()
        out = [(stream_id, host, port, next_seq,
                self.db.execute(LOWEST_PENDING, (stream_id,)).fetchone()[0])
               for stream_id, host, port, next_seq in rows]
        # Numbered rows are covered by the streams' counters; unnumbered ones by the
        # periodic look at them (which runs first thing), or by numbering the rows that
        # were there before tinymqd.
        (self.scan_x,) = self.db.execute(LAST_ROW).fetchone()
        if not store.numbering_ready(self.db):
            self.old_rows_after = 0
            log.info("numbering the rows queued before tinymqd first ran, in the order of x")
        return out

    def destination_of(self, stream_id):
        """(host, port) of a stream the trigger made since, or None."""
        return self.db.execute(STREAM, (stream_id,)).fetchone()

    # -- new and changed rows ------------------------------------------------------------

    @property
    def behind(self):
        """More rows may be waiting to be looked at: poll again without sleeping."""
        return self.data_version is None

    def poll(self):
        """Look at rows inserted since the last look (cheap when nothing changed)."""
        (version,) = self.db.execute("PRAGMA data_version").fetchone()
        if version == self.data_version:
            return {}
        self.data_version = version
        rows = self.db.execute(NEW_ROWS, (self.scan_x, SCAN_BATCH)).fetchall()
        if not rows:
            return {}
        self.scan_x = rows[-1][0]
        if len(rows) == SCAN_BATCH:
            self.data_version = None  # more to read: look again next round
        return self._examine(rows)

    def _examine(self, rows, renumber_allowed=True):
        """Learn the numbered rows' streams; mark or number the others."""
        errors, renumber, found = {}, [], {}
        for x, stream, seq, last_error, problem, size, token_size in rows:
            if stream is not None:
                if seq >= found.get(stream, 0):
                    found[stream] = seq + 1
                continue
            if problem is None:
                problem = _size_problem(None, size, token_size, self.max_message)
            if problem is None:
                if renumber_allowed and self.old_rows_after is None:
                    renumber.append(x)
            else:
                if isinstance(problem, str):
                    problem = problem.encode()
                if last_error != problem:
                    errors.setdefault(problem.decode(), []).append(x)
        if errors or renumber:
            def write(conn):
                for problem, xs in errors.items():
                    conn.execute(ROW_ERROR, (problem, json.dumps(xs)))
                if renumber:
                    conn.execute(RENUMBER, (json.dumps(renumber),))

            done = (lambda: self.inbox.put(events.RowsRenumbered(renumber))) if renumber else None
            self.writer.submit(write, done)
        return found

    def on_renumbered(self, xs):
        wanted = set(xs)  # one batch of UNNUMBERED: ascending x, read back in one range
        rows = [row for row in self.db.execute(ROWS_BETWEEN, (xs[0], xs[-1]))
                if row[0] in wanted]
        return self._examine(rows, renumber_allowed=False)

    def rescan_due(self, now):
        return now >= self.next_rescan

    def rescan(self, now):
        """Look at the next batch of unnumbered rows: mark the bad, number the fixed."""
        self.next_rescan = now + RESCAN_INTERVAL_S
        if self.old_rows_after is not None:
            return {}
        rows = self.db.execute(UNNUMBERED, (self.rescan_after, self.scan_x,
                                            RENUMBER_BATCH)).fetchall()
        if len(rows) == RENUMBER_BATCH:  # more of them: the next batch soon
            self.rescan_after = rows[-1][0]
            self.next_rescan = now + RENUMBER_PAUSE_S
        else:
            self.rescan_after = 0
        return self._examine(rows)

    # -- rows from before tinymqd ------------------------------------------------------------

    def old_rows_due_at(self):
        """When to number the next chunk of rows from before tinymqd; None: no such rows
        wait, or a chunk is being written."""
        if self.old_rows_after is None or self.old_rows_busy:
            return None
        return self.old_rows_next

    def number_old_rows(self):
        """The next chunk of rows from before tinymqd (store.py); the last one also
        makes new rows numbered as they are inserted."""
        after = self.old_rows_after
        xs = [x for (x,) in self.db.execute(store.OLD_ROWS, (after, OLD_ROWS_BATCH))]
        last = len(xs) < OLD_ROWS_BATCH
        self.old_rows_busy = True

        def done():
            self.inbox.put(events.OldRowsNumbered(after, xs[-1] if xs else after, last))

        if last:  # all that are left, whatever came since, and the triggers: at once
            self.writer.submit(store.create_numbering_triggers, done,
                               staged={"old_rows": [(after + 1, LAST_X)]})
        else:
            self.writer.submit(staged={"old_rows": [(xs[0], xs[-1])]}, done=done)

    def on_old_rows_numbered(self, after, upto, last, now):
        self.old_rows_busy = False
        self.old_rows_next = now + OLD_ROWS_PAUSE_S
        if last:
            upto = self.scan_x  # the last transaction numbered all that was left
        # These rows, and the unusable rows among and before them.
        found = self._examine(self.db.execute(ROWS_BETWEEN, (after + 1, upto)).fetchall(),
                              renumber_allowed=False)
        self.old_rows_after = upto
        if last:
            self.old_rows_after = None
            self.next_rescan = 0.0  # the rows after the last of them
            log.info("the rows queued before tinymqd first ran are numbered; new rows "
                     "are numbered as they are inserted")
        return found

    # -- reading pending rows ------------------------------------------------------------------

    def load(self, stream_id, load_from, assigned, limit, max_bytes):
        """The next pending rows of a stream as (seq, x, encoded message), at most `limit`
        rows and about `max_bytes`; and the sequence number to read from next time. Rows
        too large to send are taken out of the stream (they block nobody)."""
        cursor = self.db.execute(LOAD, (stream_id, load_from, assigned, limit,
                                        self.max_message))
        out, loaded, rows, too_large = [], 0, 0, []
        try:
            for seq, x, kind, data, length, token, ts in cursor:
                load_from = seq + 1
                rows += 1
                problem = _size_problem(data, length, token, self.max_message)
                if problem:
                    too_large.append((problem, x))
                    continue
                blob = _encode(kind, data, token, ts)
                out.append((seq, x, blob))
                loaded += len(blob)
                if loaded >= max_bytes:
                    break
            else:
                if rows < limit:
                    load_from = assigned  # no other row below it is pending
        finally:
            cursor.close()  # ends the read transaction, so checkpoints can proceed
        if too_large:
            self.writer.submit(lambda conn: conn.executemany(UNNUMBER, too_large))
        return out, load_from

    def deleted(self, stream_id, seqs):
        """Which of a stream's sequence numbers `seqs` (ascending) have no row any more
        (DELETE cancels)."""
        if not seqs:
            return []
        first, last = next(iter(seqs)), next(reversed(seqs))
        (count,) = self.db.execute(COUNT_EXISTING, (stream_id, first, last)).fetchone()
        if count == len(seqs):  # the cheap test: no row in the range is gone
            return []
        present = {row[0] for row in self.db.execute(EXISTING, (stream_id, first, last))}
        return [seq for seq in seqs if seq not in present]

    # -- last_error for a whole stream ------------------------------------------------------------

    def show_stream_error(self, stream_id, base, text):
        """Write text (None: clear it) to the first waiting rows of a stream: those from
        the lowest pending sequence number on. Rows marked earlier lie below
        base + ERROR_ROWS too (base only moves up)."""
        if text is None:
            self.writer.submit(lambda c: c.execute(CLEAR_STREAM_ERROR,
                                                   (stream_id, base + ERROR_ROWS)))
        else:
            self.writer.submit(lambda c: c.execute(STREAM_ERROR,
                                                   (text, stream_id, base, ERROR_ROWS)))


def _size_problem(data, length, token, max_message):
    size = len(data) if isinstance(data, bytes) else length  # NULL here: over the limit
    if size is not None and size > max_message:
        return f"data is {size} bytes or more, larger than max_message ({max_message} bytes)"
    token_size = len(token) if isinstance(token, bytes) else token
    if isinstance(token_size, int) and token_size > MAX_TOKEN_BYTES:
        return f"token is {token_size} bytes, larger than {MAX_TOKEN_BYTES} bytes"
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
