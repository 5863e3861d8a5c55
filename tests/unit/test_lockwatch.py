"""lockwatch: the writer sees real sqlite3 CLI processes that have the database open, and
never reads /proc/locks to do so."""

import os
import subprocess
import sys
import time

import pytest

from tests.support.wait import wait_until
from tinymqd import lockwatch, store

# Opens of /proc/locks by this process while `_counting` holds True (an audit hook sees
# every open(), os.open() included; hooks cannot be removed, so one serves every test).
_proc_locks_opens = []
_counting = [False]


def _audit(event, args):
    if event == "open" and _counting[0] and str(args[0]) == "/proc/locks":
        _proc_locks_opens.append(args[0])


sys.addaudithook(_audit)


@pytest.fixture(params=["inotify", "f-getlk"])
def db(request, tmp_path):
    """The database, this process's own connection to it, and a watch on it: F_GETLK
    plus inotify on opens, or (where inotify is missing) F_GETLK alone."""
    path = str(tmp_path / "q.db")
    store.initialize(path)
    conn = store.connect(path)  # this process's own connection: never counts
    conn.execute("SELECT count(*) FROM mqout").fetchone()
    watch = lockwatch.OtherConnections(path, watch_opens=request.param == "inotify")
    _proc_locks_opens.clear()
    _counting[0] = True
    yield path, watch
    _counting[0] = False
    assert not _proc_locks_opens, "lockwatch read /proc/locks"
    conn.close()
    watch.close()


def lock_holders(path):
    """What the test sees (never lockwatch): pids holding SQLite's SHARED lock on path,
    from /proc/locks."""
    st = os.stat(path)
    name = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    name += f"{lockwatch.SHARED_FIRST} "
    saved, _counting[0] = _counting[0], False
    try:
        with open("/proc/locks") as f:
            return {int(line.split()[4]) for line in f if name in line and "->" not in line}
    finally:
        _counting[0] = saved


def open_shell(path):
    """An interactive sqlite3 shell that has read the database and keeps it open."""
    shell = subprocess.Popen(["sqlite3", path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    shell.stdin.write("SELECT count(*) FROM mqout;\n")
    shell.stdin.flush()
    assert shell.stdout.readline().strip() == "0"
    return shell


def close_shell(shell):
    shell.stdin.close()
    shell.wait(10)


def test_sees_another_process_and_not_its_own_connections(db):
    path, watch = db
    assert watch.oldest_holder() is None
    shell = open_shell(path)
    try:
        assert watch.oldest_holder() == shell.pid
    finally:
        close_shell(shell)
    assert watch.oldest_holder() is None


def test_busy_while_a_short_lived_connection_is_open_and_remembers_when(db):
    path, watch = db
    assert not watch.busy() and watch.last_busy == float("-inf")
    shell = open_shell(path)
    try:
        t0 = time.monotonic()
        assert watch.busy()
        assert watch.last_busy >= t0
    finally:
        close_shell(shell)
    assert not watch.busy()


def test_does_not_wait_when_alone_and_watches_nothing(db):
    _path, watch = db
    assert watch.wait_until_alone() == 0.0  # answered by the first F_GETLK
    assert watch.opens is None, "an inotify watch (and its thread) with nobody to watch"


def waits_for_a_short_lived_shell(path, watch):
    shell = open_shell(path)
    t0 = time.monotonic()
    shell.stdin.write(".shell sleep 0.02\n")  # keeps the database open 20 ms more, then exits
    shell.stdin.close()
    waited = watch.wait_until_alone()
    # It waited for the shell, and returned once it had let go (well before MAX_WAIT).
    assert shell.pid not in lock_holders(path), "returned while the shell still had it open"
    assert shell.wait(10) == 0
    assert 0.015 <= waited < lockwatch.MAX_WAIT, waited
    assert time.monotonic() - t0 >= 0.015


def test_waits_for_a_short_lived_connection_to_finish(db, monkeypatch):
    path, watch = db
    monkeypatch.setattr(lockwatch, "MAX_WAIT", 5.0)  # a loaded machine may be slow
    monkeypatch.setattr(lockwatch, "RESIDENT_AFTER", 5.0)
    waits_for_a_short_lived_shell(path, watch)
    assert watch.oldest_holder() is None


def stop_waiting_for(shell, watch):
    t0 = time.monotonic()
    waits = []
    while time.monotonic() - t0 < lockwatch.RESIDENT_AFTER + lockwatch.MAX_WAIT:
        waits.append(watch.wait_until_alone())
        time.sleep(0.002)
    # It waited for it at first, never for long in one go ...
    assert waits[0] >= lockwatch.MAX_WAIT, waits
    assert max(waits) <= lockwatch.MAX_WAIT + 0.05, waits
    # ... and not at all once the connection had stayed open for RESIDENT_AFTER.
    time.sleep(lockwatch.MAX_WAIT + 0.01)
    assert watch.wait_until_alone() == 0.0
    assert watch.oldest_holder() == shell.pid


def test_stops_waiting_for_a_connection_that_stays_open(db):
    path, watch = db
    shell = open_shell(path)
    try:
        stop_waiting_for(shell, watch)
    finally:
        close_shell(shell)
    wait_until(lambda: watch.oldest_holder() is None, 5, "the shell's locks released")


def test_still_waits_for_a_short_lived_one_beside_a_long_lived_one(tmp_path, monkeypatch):
    """F_GETLK names only the long-lived one; the watch on opens sees the other."""
    path = str(tmp_path / "q.db")
    store.initialize(path)
    conn = store.connect(path)
    conn.execute("SELECT count(*) FROM mqout").fetchone()
    watch = lockwatch.OtherConnections(path)
    resident = open_shell(path)
    _proc_locks_opens.clear()
    _counting[0] = True
    opened = time.monotonic()
    try:
        stop_waiting_for(resident, watch)
        # A loaded machine may be slow: the short-lived shell counts as such for 1 s (the
        # resident has had the file open longer by then).
        monkeypatch.setattr(lockwatch, "MAX_WAIT", 5.0)
        time.sleep(max(0.0, opened + 1.1 - time.monotonic()))
        monkeypatch.setattr(lockwatch, "RESIDENT_AFTER", 1.0)
        waits_for_a_short_lived_shell(path, watch)
        assert watch.oldest_holder() == resident.pid
        assert watch.wait_until_alone() == 0.0
    finally:
        _counting[0] = False
        close_shell(resident)
        conn.close()
        watch.close()
    assert not _proc_locks_opens, "lockwatch read /proc/locks"


def test_a_consumer_that_connected_during_a_quiet_spell_is_not_waited_for(tmp_path):
    """A resident connection opened while the writer had nothing to do: the next message
    goes at once, not after a wait (F_GETLK names it for the first time then)."""
    path = str(tmp_path / "q.db")
    store.initialize(path)
    conn = store.connect(path)
    conn.execute("SELECT count(*) FROM mqout").fetchone()
    watch = lockwatch.OtherConnections(path)
    try:
        earlier = open_shell(path)  # someone had the database open once: watch made
        watch.wait_until_alone()
        close_shell(earlier)
        consumer = open_shell(path)
        try:
            # Quiet: the consumer has had the file open for RESIDENT_AFTER when a
            # message comes.
            wait_until(lambda: not watch.opens.recent(time.monotonic()), 5,
                       "the consumer's open is RESIDENT_AFTER old")
            assert watch.oldest_holder() == consumer.pid
            assert watch.wait_until_alone() == 0.0
        finally:
            close_shell(consumer)
    finally:
        conn.close()
        watch.close()


def test_a_process_that_has_run_for_long_is_not_taken_for_a_cli_at_first_sight(db):
    """It started RESIDENT_AFTER ago or more (here /proc tells), and only now reads the
    database: a program or shell that keeps it open, not a CLI about to insert."""
    path, watch = db
    shell = subprocess.Popen(["sqlite3", path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(lockwatch.RESIDENT_AFTER + 0.05)  # it runs, without a lock yet
        shell.stdin.write("SELECT count(*) FROM mqout;\n")
        shell.stdin.flush()
        assert shell.stdout.readline().strip() == "0"
        assert watch.oldest_holder() == shell.pid
        assert watch.wait_until_alone() == 0.0
    finally:
        close_shell(shell)


def test_after_a_full_wait_it_does_not_wait_for_as_long(db, monkeypatch):
    """Short-lived processes that never leave a gap must not starve the writer."""
    path, watch = db
    monkeypatch.setattr(lockwatch, "RESIDENT_AFTER", 60.0)  # the shell counts as short-lived
    shell = open_shell(path)
    try:
        assert watch.wait_until_alone() >= lockwatch.MAX_WAIT
        t0 = time.monotonic()
        assert watch.wait_until_alone() == 0.0
        time.sleep(max(0.0, t0 + lockwatch.MAX_WAIT + 0.01 - time.monotonic()))
        assert watch.wait_until_alone() >= lockwatch.MAX_WAIT
    finally:
        close_shell(shell)
