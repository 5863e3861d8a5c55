"""Plain sqlite3 INSERTs never fail in ordinary use.

README.md's way to enqueue is `sqlite3 DB "INSERT into mqout ..."`. The sqlite3 CLI sets
no busy timeout: its INSERT fails at once with "database is locked" if another
connection holds the database's write lock at that moment. tinymqd writes the same
database (rows it received, deletes of delivered rows, last_error), so it must never be
in the way of such an INSERT: one after another at any pace while it delivers these and
other messages, in a burst right after it has started, to several destinations. Each
test counts every INSERT that fails, checks that the rows that went in arrive exactly
once, in order, and last requires that none failed.

Both daemons flooding each other at full speed is not ordinary use: `make bench` prints
how many plain INSERTs fail then.
"""

import random
import threading

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.ports import free_udp_port

N = 300  # plain INSERTs per test: a failure rate of 1 in 1,000 fails a run 1 time in 4


class InsertsFailed(AssertionError):
    """Some plain INSERTs failed (raised last, once everything else was checked)."""


# The promise is not kept yet: in each of these tests about 1 to 3 in 1,000 plain
# INSERTs fail ("database is locked") on a 2-core machine, so a run fails 30 to 60 % of
# the time. The mark expects only that failure (any other one fails the test) and keeps
# it visible as XFAIL, or XPASS once the writer's lock handling in tinymqd/lockwatch.py
# and writer.py keeps out of the way; remove it when these tests pass.
NOT_YET = pytest.mark.xfail(raises=InsertsFailed, strict=False, reason=(
    "tinymqd's writer still holds the write lock in front of about 1-3 in 1,000 plain "
    "sqlite3 INSERTs (tinymqd/lockwatch.py, writer.py)"))


class Stream:
    """Another program sending from `sender` to `receiver` all the while: `per` messages
    every `every` seconds (token tag, data '<tag>-<i:06d>'), enqueued in the sender's
    database with a busy timeout (so it never fails itself)."""

    def __init__(self, sender, receiver, tag, per=20, every=0.05):
        self.sender, self.receiver, self.tag = sender, receiver, tag
        self.per, self.every = per, every
        self.sent = 0
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stream-{tag}", daemon=True)

    def _run(self):
        try:
            while not self._stop.is_set():
                dbmod.enqueue_series(self.sender.db, "127.0.0.1", self.receiver.port, self.tag,
                                     self.per, start=self.sent + 1)
                self.sent += self.per
                self._stop.wait(self.every)  # the program's pace
        except Exception as exc:  # reported by __exit__
            self.error = exc

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)
        assert self.error is None, f"the other program's enqueue failed: {self.error}"

    def assert_delivered(self, timeout=30):
        assert_series_delivered(self.sender, self.receiver, self.tag, self.sent, timeout)


def assert_none_failed(tried, failures):
    if failures:
        raise InsertsFailed(f"{len(failures)} of {tried} plain sqlite3 INSERTs failed, "
                            f"e.g. {failures[0]!r}")


@NOT_YET
@pytest.mark.timeout(120)
@pytest.mark.parametrize("pace", ["back-to-back", "random-pauses"])
def test_one_after_another_while_the_daemon_delivers(pair, pace):
    """A delivers a backlog of 2,000 messages to B and stores a steady stream from B
    (about 400 a second) while 300 plain INSERTs go into its mqout, back to back or
    with random pauses of up to 20 ms."""
    a, b = pair
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "backlog", 2000)
    rng = random.Random(7)
    pause = (lambda: rng.uniform(0, 0.02)) if pace == "random-pauses" else None
    with Stream(b, a, "stream") as stream:
        tried, failures, done = dbmod.plain_inserts(a.db, [(b.port, "plain")], N, pause=pause)
    assert_series_delivered(a, b, "plain", done["plain"], 30)
    assert_series_delivered(a, b, "backlog", 2000, 30)
    stream.assert_delivered()
    a.stop()
    b.stop()
    assert_none_failed(tried, failures)


@NOT_YET
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backlog", [0, 3000], ids=["idle", "with-backlogs"])
def test_burst_right_after_start(pair, backlog):
    """A restarts; right after READY=1, 300 plain INSERTs back to back into its mqout.
    With backlogs, A starts with 3,000 rows queued for B and B has 3,000 waiting for A,
    so A sends, numbers and stores at full speed meanwhile."""
    a, b = pair
    a.stop()
    if backlog:
        dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "backlog", backlog)
        dbmod.enqueue_series(b.db, "127.0.0.1", a.port, "to-a", backlog)
    a.start()
    tried, failures, done = dbmod.plain_inserts(a.db, [(b.port, "plain")], N)
    assert_series_delivered(a, b, "plain", done["plain"], 30)
    if backlog:
        assert_series_delivered(a, b, "backlog", backlog, 30)
        assert_series_delivered(b, a, "to-a", backlog, 30)
    a.stop()
    b.stop()
    assert_none_failed(tried, failures)


@NOT_YET
@pytest.mark.timeout(120)
def test_to_several_destinations(start_daemon):
    """300 plain INSERTs round robin to three running daemons and one that is down
    (its rows stay queued), while B streams to A."""
    a = start_daemon("a")
    live = [start_daemon(name) for name in ("b", "c", "d")]
    down = free_udp_port()
    targets = [(d.port, f"plain-{d.name}") for d in live] + [(down, "plain-down")]
    with Stream(live[0], a, "stream") as stream:
        tried, failures, done = dbmod.plain_inserts(a.db, targets, N)
    for d in live:
        tag = f"plain-{d.name}"
        assert_series_delivered(a, d, tag, done[tag], 30)
    stream.assert_delivered()
    assert a.count("mqout", "token = 'plain-down'") == done["plain-down"]
    for d in (a, *live):
        d.stop()
    assert_none_failed(tried, failures)
