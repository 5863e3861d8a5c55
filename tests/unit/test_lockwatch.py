"""lockwatch: the writer sees real sqlite3 CLI processes that have the database open."""

import subprocess
import time

import pytest

from tests.support.wait import wait_until
from tinymqd import lockwatch, store


@pytest.fixture(params=["proc-locks", "f-getlk"])
def db(request, tmp_path):
    """The database, this process's own connection to it, and a watch on it: reading
    /proc/locks, or (where that cannot be read) asking the kernel with F_GETLK."""
    path = str(tmp_path / "q.db")
    store.initialize(path)
    conn = store.connect(path)  # this process's own connection: never counts
    conn.execute("SELECT count(*) FROM mqout").fetchone()
    source = lockwatch.PROC_LOCKS if request.param == "proc-locks" else str(tmp_path / "none")
    watch = lockwatch.OtherConnections(path, proc_locks=source)
    yield path, watch
    conn.close()
    watch.close()


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
    assert watch.holders() == set()
    shell = open_shell(path)
    try:
        assert watch.holders() == {shell.pid}
    finally:
        close_shell(shell)
    assert watch.holders() == set()


def test_does_not_wait_when_alone(db):
    _path, watch = db
    assert watch.wait_until_alone() < lockwatch.MAX_WAIT / 2


def waits_for_a_short_lived_shell(path, watch):
    shell = open_shell(path)
    t0 = time.monotonic()
    shell.stdin.write(".shell sleep 0.02\n")  # keeps the database open 20 ms more, then exits
    shell.stdin.close()
    waited = watch.wait_until_alone()
    # It waited for the shell, and returned once it had gone (well before MAX_WAIT).
    assert shell.pid not in watch.holders(), "returned while the shell still had it open"
    assert shell.wait(10) == 0
    assert 0.015 <= waited < lockwatch.MAX_WAIT, waited
    assert time.monotonic() - t0 >= 0.015


def test_waits_for_a_short_lived_connection_to_finish(db, monkeypatch):
    path, watch = db
    monkeypatch.setattr(lockwatch, "MAX_WAIT", 5.0)  # a loaded machine may be slow
    monkeypatch.setattr(lockwatch, "RESIDENT_AFTER", 5.0)
    waits_for_a_short_lived_shell(path, watch)
    assert watch.holders() == set()


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
    assert watch.wait_until_alone() < 0.001
    assert shell.pid in watch.holders()


def test_stops_waiting_for_a_connection_that_stays_open(db):
    path, watch = db
    shell = open_shell(path)
    try:
        stop_waiting_for(shell, watch)
    finally:
        close_shell(shell)
    wait_until(lambda: watch.holders() == set(), 5, "the shell's locks released")


def test_still_waits_for_a_short_lived_one_beside_a_long_lived_one(tmp_path, monkeypatch):
    """Needs /proc/locks: F_GETLK names only the oldest holder."""
    path = str(tmp_path / "q.db")
    store.initialize(path)
    conn = store.connect(path)
    conn.execute("SELECT count(*) FROM mqout").fetchone()
    watch = lockwatch.OtherConnections(path)
    resident = open_shell(path)
    try:
        stop_waiting_for(resident, watch)
        monkeypatch.setattr(lockwatch, "MAX_WAIT", 5.0)  # a loaded machine may be slow
        waits_for_a_short_lived_shell(path, watch)
        assert watch.holders() == {resident.pid}
    finally:
        close_shell(resident)
        conn.close()
        watch.close()


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
