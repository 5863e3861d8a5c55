"""Rows of mqout for the scheduler: notices new and moved rows, marks those that cannot
be sent, numbers the rows that predate tinymqd, and reads a stream's pending rows as
messages.

A trigger gives every row its destination stream and sequence number as it is inserted
(numbering.py). This module only reads the database, on the scheduler's read-only
connection; what it changes goes through the writer, and the writer's confirmations come
back as events (events.RowsRenumbered, events.OldRowsNumbered).
"""

import json
import logging

from tinymqd import encoding, events, numbering, store

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
# Numbered rows (almost all) need nothing but their number: the rest is only computed
# for the others.
ROW_COLUMNS = ", ".join(["x", "stream", "seq", "last_error"] + [
    f"CASE WHEN stream IS NULL THEN {expression} END" for expression in (
        numbering.row_problem("mqout"), "length(CAST(data AS BLOB))",
        "length(CAST(token AS BLOB))", "length(CAST(ts AS BLOB))")])
NEW_ROWS = f"SELECT {ROW_COLUMNS} FROM mqout WHERE x > ? ORDER BY x LIMIT ?"
UNNUMBERED = f"""
SELECT {ROW_COLUMNS} FROM mqout
WHERE stream IS NULL AND seq IS NULL AND x > ? AND x <= ? ORDER BY x LIMIT ?
"""
ROWS_BETWEEN = f"SELECT {ROW_COLUMNS} FROM mqout WHERE x BETWEEN ? AND ? ORDER BY x"
STREAMS = ("SELECT id, host, port, next_seq, node, open IS NOT NULL FROM tinymq_streams "
           "ORDER BY opened")
STREAM = "SELECT host, port, node FROM tinymq_streams WHERE id = ?"
MOVED = "SELECT rowid, stream, seq FROM tinymq_moved WHERE rowid > ? ORDER BY rowid"
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
class Intake:
    """Owned by the scheduler thread. Methods that find numbered rows return
    {stream id: highest sequence number found + 1}."""

    def __init__(self, db, writer, inbox, max_message):
        self.db = db
        self.writer = writer
        self.inbox = inbox
        self.max_message = max_message
        self.scan_x = 0  # rows up to here have been looked at
        self.moved_seen = 0  # notes of moved rows up to this rowid have been read
        self.data_version = None  # of the database when last looked (None: look now)
        self.next_rescan = 0.0  # when to look at unnumbered rows again
        self.rescan_after = 0  # ... from the row after this x
        self.old_rows_after = None  # rows from before tinymqd wait for numbers after this x
        self.old_rows_busy = False
        self.old_rows_next = 0.0  # when to number the next chunk of them

    # -- start-up --------------------------------------------------------------------

    def streams(self):
        """(id, host, port, next_seq, node, open, lowest pending seq or None) of every
        stream, in the order they were opened."""
        rows = self.db.execute(STREAMS).fetchall()
        out = [(*row, self.db.execute(LOWEST_PENDING, (row[0],)).fetchone()[0])
               for row in rows]
        # Numbered rows are covered by the streams' counters; unnumbered ones by the
        # periodic look at them (which runs first thing), or by numbering the rows that
        # were there before tinymqd.
        (self.scan_x,) = self.db.execute(LAST_ROW).fetchone()
        if not numbering.numbering_ready(self.db):
            self.old_rows_after = 0
            log.info("numbering the rows queued before tinymqd first ran, in the order of x")
        return out

    def destination_of(self, stream_id):
        """(host, port, node) of a stream opened since, or None."""
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
        found = self._moved()
        rows = self.db.execute(NEW_ROWS, (self.scan_x, SCAN_BATCH)).fetchall()
        if not rows:
            return found
        self.scan_x = rows[-1][0]
        if len(rows) == SCAN_BATCH:
            self.data_version = None  # more to read: look again next round
        return _merge(found, self._examine(rows))

    def _moved(self):
        """Rows an UPDATE gave another destination (numbering.py notes them)."""
        found = {}
        last = self.moved_seen
        for rowid, stream, seq in self.db.execute(MOVED, (last,)):
            last = rowid
            if stream is not None and seq >= found.get(stream, 0):
                found[stream] = seq + 1
        if last != self.moved_seen:
            self.moved_seen = last
            self.writer.submit(staged={"moved": [(last,)]})  # read: the notes can go
        return found

    def _examine(self, rows, renumber_allowed=True):
        """Learn the numbered rows' streams; mark or number the others."""
        errors, renumber, found = {}, [], {}
        for x, stream, seq, last_error, problem, size, token_size, ts_size in rows:
            if stream is not None:
                if seq >= found.get(stream, 0):
                    found[stream] = seq + 1
                continue
            if problem is None:
                problem = encoding.size_problem(size, token_size, ts_size, self.max_message)
            if problem is None:
                if renumber_allowed and self.old_rows_after is None:
                    renumber.append(x)
            else:
                # SQL quotes the bad value into the text, which need not be UTF-8.
                problem = store.as_text(problem)
                if store.as_text(last_error) != problem:
                    errors.setdefault(problem, []).append(x)
        if errors:
            def write(conn):
                for problem, xs in errors.items():
                    conn.execute(ROW_ERROR, (problem, json.dumps(xs)))

            self.writer.submit(write)
        if renumber:
            self.writer.submit(staged={"renumber": [(x,) for x in renumber]},
                               done=lambda: self.inbox.put(events.RowsRenumbered(renumber)))
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
        xs = [x for (x,) in self.db.execute(numbering.OLD_ROWS, (after, OLD_ROWS_BATCH))]
        last = len(xs) < OLD_ROWS_BATCH
        self.old_rows_busy = True

        def done():
            self.inbox.put(events.OldRowsNumbered(after, xs[-1] if xs else after, last))

        if last:  # all that are left, whatever came since, and the triggers: at once
            self.writer.submit(numbering.create_numbering_triggers, done,
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
        that cannot be sent are taken out of the stream with their reason (they block
        nobody)."""
        cursor = self.db.execute(LOAD, (stream_id, load_from, assigned, limit,
                                        self.max_message))
        out, loaded, rows, unsendable = [], 0, 0, []
        try:
            for seq, x, kind, data, length, token, ts in cursor:
                load_from = seq + 1
                rows += 1
                try:
                    blob = encoding.row_message(kind, data, length, token, ts,
                                                self.max_message)
                except encoding.Unsendable as e:
                    unsendable.append((str(e), x))
                    continue
                out.append((seq, x, blob))
                loaded += len(blob)
                if loaded >= max_bytes:
                    break
            else:
                if rows < limit:
                    load_from = assigned  # no other row below it is pending
        finally:
            cursor.close()  # ends the read transaction, so checkpoints can proceed
        if unsendable:
            self.take_out(unsendable)
        return out, load_from

    def rehome(self, stream_id):
        """Close a stream and number its waiting rows afresh in a new one (in x order),
        noting them as moved rows, which the next poll reads."""
        def move(conn):
            conn.execute("UPDATE tinymq_streams SET open = NULL WHERE id = ?", (stream_id,))
            conn.execute("INSERT INTO temp.staged_renumber SELECT x FROM mqout "
                         "WHERE stream = ?", (stream_id,))
            conn.execute("UPDATE mqout SET stream = NULL, seq = NULL WHERE stream = ?",
                         (stream_id,))
            for statement in numbering.FIXED_ROWS_NUMBERING:
                conn.execute(statement)
            conn.execute("INSERT INTO tinymq_moved (stream, seq) SELECT stream, seq "
                         "FROM mqout WHERE x IN (SELECT x FROM temp.staged_renumber)")
            conn.execute("DELETE FROM temp.staged_renumber")

        self.writer.submit(move)

    def take_out(self, rows):
        """Take rows out of their streams with a reason: (last_error text, x) pairs."""
        self.writer.submit(lambda conn: conn.executemany(UNNUMBER, rows))

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


def _merge(a, b):
    for stream, upto in b.items():
        if upto > a.get(stream, 0):
            a[stream] = upto
    return a
