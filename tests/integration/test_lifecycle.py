"""Readiness and shutdown as systemd sees them: READY=1, STATUS=, STOPPING=1, signals."""

import signal
import time
from pathlib import Path

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.wait import wait_until


def test_ready_then_status(start_daemon):
    a = start_daemon("a")
    # READY=1 only once the socket is bound and the database is ready
    assert {"mqout", "mqin"} <= dbmod.tables(a.db)
    got = a.notify.wait_for("STATUS", since=a.notify_mark, timeout=10)
    assert got is not None, "no STATUS= within 10 s of start"
    assert got[1]["STATUS"].strip(), "empty STATUS="
    a.stop()


def test_status_is_sent_periodically(start_daemon):
    a = start_daemon("a")
    first = a.notify.wait_for("STATUS", since=a.notify_mark, timeout=10)
    assert first is not None, "no STATUS="
    n = len(a.notify.values("STATUS", since=a.notify_mark))
    wait_until(lambda: len(a.notify.values("STATUS", since=a.notify_mark)) > n, 12,
               "a second STATUS= line (periodic)")
    a.stop()


def test_sigterm_sends_stopping_and_exits_0_within_2s(start_daemon):
    a = start_daemon("a")
    mark = a.notify.mark()
    rc, took = a.stop(signal.SIGTERM)
    assert rc == 0 and took < 2
    assert a.notify.find("STOPPING", "1", since=mark) is not None, "no STOPPING=1"


def test_watchdog_when_the_unit_sets_watchdogsec(make_daemon):
    a = make_daemon("a")
    a.start(env={"WATCHDOG_USEC": "1000000"})  # WatchdogSec=1s
    mark = a.notify.mark()
    wait_until(lambda: len(a.notify.values("WATCHDOG", since=mark)) >= 3, 3.5,
               "WATCHDOG=1 at least every 1 s / 2")
    assert set(a.notify.values("WATCHDOG", since=mark)) == {"1"}
    a.stop()


def test_sigint_exits_0_within_2s(start_daemon):
    a = start_daemon("a")
    rc, took = a.stop(signal.SIGINT)
    assert rc == 0 and took < 2


def test_logs_go_to_stderr_outside_systemd(start_daemon):
    a = start_daemon("a")
    assert a.stderr_text().strip(), "nothing logged on stderr at log_level info"
    a.stop()


@pytest.mark.timeout(90)
def test_sigterm_under_load_exits_0_within_2s_and_loses_nothing(pair):
    a, b = pair
    first, last = dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "load", 5000)
    dbmod.enqueue_series(b.db, "127.0.0.1", a.port, "back", 5000)
    wait_until(lambda: b.count("mqin") >= 200 or b.count("mqin") == 5000, 30, "transfer started")
    a.stop()  # asserts exit 0 within 2 s
    b.stop()
    a.start()
    b.start()
    assert_series_delivered(a, b, "load", 5000, 60)
    assert_series_delivered(b, a, "back", 5000, 30)
    a.stop()
    b.stop()


def test_restart_is_quick_and_ready_again(start_daemon):
    a = start_daemon("a")
    t0 = time.monotonic()
    a.restart()
    assert a.ready_at - t0 < 10
    a.stop()


def test_network_threads_yield_the_cpu_to_the_writer(start_daemon):
    """The receiver and the scheduler run at nice +5 and SCHED_BATCH, so the writer (at
    the process's priority) rarely loses its CPU while it holds the database lock."""
    a = start_daemon("a")
    threads = {}
    for stat in Path(f"/proc/{a.pid}/task").glob("*/stat"):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        threads[stat.parent.name] = (int(fields[16]), int(fields[38]))  # nice, policy
    lowered = [t for t, (nice, policy) in threads.items() if nice == 5 and policy == 3]
    assert len(lowered) == 2, threads
    # The others (main thread, writer, ...) keep the process's own priority.
    assert all(nice == 0 for t, (nice, _policy) in threads.items() if t not in lowered), threads
    a.stop()
