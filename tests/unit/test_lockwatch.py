"""lockwatch: the writer sees a real sqlite3 CLI process that has the database open."""

import subprocess
import time

import pytest

from tests.support.wait import wait_until
from tinymqd import lockwatch, store


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "q.db")
    store.initialize(path)
    conn = store.connect(path)  # this process's own connection: never counts
    conn.execute("SELECT count(*) FROM mqout").fetchone()
    watch = lockwatch.OtherConnections(path)
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
    assert watch.holder() is None
    shell = open_shell(path)
    try:
        assert watch.holder() == shell.pid
    finally:
        close_shell(shell)
    assert watch.holder() is None


def test_does_not_wait_when_alone(db):
    _path, watch = db
    assert watch.wait_until_alone() < lockwatch.MAX_WAIT / 2


def test_waits_for_a_short_lived_connection_to_finish(db):
    path, watch = db
    shell = open_shell(path)
    t0 = time.monotonic()
    shell.stdin.write(".shell sleep 0.02\n")  # keeps the database open 20 ms more, then exits
    shell.stdin.close()
    waited = watch.wait_until_alone()
    assert shell.wait(10) == 0
    assert watch.holder() is None
    # It waited for the shell, and returned once it had gone (not after the full MAX_WAIT).
    assert 0.01 <= waited < lockwatch.MAX_WAIT, waited
    assert time.monotonic() - t0 >= 0.015


def test_stops_waiting_for_a_connection_that_stays_open(db):
    path, watch = db
    shell = open_shell(path)
    try:
        waits = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            waits.append(watch.wait_until_alone())
            if waits[-1] < 0.001:
                break
        # Each wait is bounded, and after RESIDENT_AFTER the writer stops waiting.
        assert max(waits) <= lockwatch.MAX_WAIT + 0.02, waits
        assert sum(waits) >= lockwatch.RESIDENT_AFTER * 0.9, waits
        assert waits[-1] < 0.001, waits
        assert watch.holder() == shell.pid
    finally:
        close_shell(shell)
    wait_until(lambda: watch.holder() is None, 5, "the shell's locks released")
