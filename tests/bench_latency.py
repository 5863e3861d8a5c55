"""`make bench`, third part: sporadic messages, and what plain sqlite3 INSERTs meet.

    /usr/bin/python3 -m tests.bench_latency [--quick] [--only ac]

One line per figure; measurements, not pass/fail tests (a dead daemon or a message not
delivered ends the run with exit 1).

(a) Sporadic latency: one message every 0.25 s, enqueued with the real sqlite3 CLI as
    users type it (no busy timeout) into A's mqout; the time from the CLI's return to
    the row being visible in B's mqin; p50, p99, max. Without a consumer on B (B's
    directory is watched with inotify; once B's WAL changes, a connection opened then
    looks), and with a resident consumer (a Python sqlite3 connection that ran a
    SELECT and stays open, as a consumer polling mqin does; it looks when B's WAL
    changes). For comparison, messages 10 ms apart.
(b) /proc/locks reads by each daemon during (a): the daemons run under
    `strace -f --seccomp-bpf -e trace=openat`, which stops them only at openat (rare in
    tinymqd), so the latency figures are not distorted. Reading /proc/locks after a
    quiet spell costs about 10 ms and stalls POSIX lock calls on the whole host.
(c) Plain `sqlite3 DB "INSERT ..."` (no busy timeout) that fail ("database is locked")
    while the daemon writes the same database. Ordinary use, where the only load is what
    the INSERTs cause (A sends each row, then deletes it once B has it): one after
    another as fast as they come and paced, a burst right after start-up, to several
    destinations; each alone and beside a resident connection on the same database (it
    hides the CLI from F_GETLK). Then under load (2,000 rows queued before them flow
    out) and during a two-way flood.
"""

import argparse
import ctypes
import ctypes.util
import os
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from tests.support import db as dbmod
from tests.support.daemon import Daemon

STRACE = None if os.environ.get("TINYMQ_BENCH_NO_STRACE") else shutil.which("strace")
VERBOSE = bool(os.environ.get("TINYMQ_BENCH_VERBOSE"))
IN_MODIFY = 0x002


class BenchFailure(AssertionError):
    pass


class TracedDaemon(Daemon):
    """A Daemon run under strace, which records its successful openat calls."""

    def command(self, args=None, use_config=True):
        cmd = super().command(args, use_config)
        if not STRACE:
            return cmd
        self.trace = self.dir / "openat.trace"
        return [STRACE, "-f", "--seccomp-bpf", "-qq", "-e", "trace=openat",
                "-e", "status=successful", "-o", str(self.trace)] + cmd

    def traced_pid(self):
        """The daemon's own pid (strace's child), or None."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def stop(self, sig=signal.SIGTERM, **kwargs):
        # strace does not pass signals on to its child: send them to the daemon.
        pid = self.traced_pid() if STRACE else None
        if pid is None:
            return super().stop(sig, **kwargs)
        os.kill(pid, sig)
        rc = self.proc.wait(10)
        if rc != 0:
            raise BenchFailure(f"{self.name} exited {rc} after {sig!r}")
        return rc

    def cleanup(self):
        pid = self.traced_pid() if STRACE and self.running else None
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        super().cleanup()

    def proc_locks_reads(self):
        """Opens of /proc/locks so far (strace writes each line as the call returns)."""
        if not STRACE or not self.trace.exists():
            return None
        with open(self.trace, "rb") as f:
            return f.read().count(b'"/proc/locks"')


class DirectoryWatch:
    """inotify on a directory: readable when a file in it is written (B's WAL)."""

    def __init__(self, directory):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                                 IN_MODIFY) < 0:
            raise OSError(ctypes.get_errno(), f"cannot watch {directory}")

    def wait(self, timeout):
        fired = bool(select.select([self.fd], [], [], timeout)[0])
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass
        return fired

    def close(self):
        os.close(self.fd)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds):
    return f"{1000 * seconds:.1f}"


def resident(db):
    """A consumer's long-lived connection: it has read the database and stays open
    (SQLite keeps its SHARED lock in WAL mode), holding no transaction."""
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("SELECT count(*) FROM mqin").fetchone()
    return conn


def seen(conn, data):
    return conn.execute("SELECT 1 FROM mqin WHERE x > (SELECT max(x) - 50 FROM mqin) "
                        "AND data = ?", (data,)).fetchone() is not None


def wait_visible(b, data, consumer, watch, deadline):
    """The moment `data` is visible in B's mqin. Sleeps until B's directory changes (its
    WAL is written), then looks: through the consumer's connection, or (no consumer)
    through a connection opened only then, so that nothing holds B's database before."""
    while True:
        if time.monotonic() > deadline:
            raise BenchFailure(f"(a) {data} not in {b.name}'s mqin after 10 s")
        fired = watch.wait(0.02)
        # The WAL is written just before the commit is visible: look again for a moment.
        until = time.monotonic() + (0.005 if fired else 0)
        while True:
            if consumer is not None:
                if seen(consumer, data):
                    return time.monotonic()
            else:
                conn = sqlite3.connect(str(b.db), isolation_level=None)
                try:
                    if seen(conn, data):
                        return time.monotonic()
                finally:
                    conn.close()
            if time.monotonic() >= until:
                break
            time.sleep(0.0002)


def sporadic(a, b, samples, gap, consumer):
    """Latencies (s) of `samples` messages `gap` s apart, CLI return -> visible at B."""
    watch = DirectoryWatch(b.dir)
    times = []
    try:
        for i in range(samples):
            data = f"sporadic-{i}-{time.time_ns()}"
            time.sleep(gap)
            watch.wait(0)
            error = dbmod.plain_insert(a.db, "127.0.0.1", b.port, "lat", data)
            if error:
                raise BenchFailure(f"(a) a plain sqlite3 INSERT into an idle daemon's "
                                   f"database failed: {error}")
            t0 = time.monotonic()
            times.append(wait_visible(b, data, consumer, watch, t0 + 10) - t0)
            for d in (a, b):
                d.assert_alive()
    finally:
        watch.close()
    return times


def fig_a(a, b, samples):
    rows = [("sporadic (0.25 s apart), no consumer", 0.25, False),
            ("sporadic (0.25 s apart), resident consumer on B", 0.25, True),
            ("back to back (10 ms apart), resident consumer on B", 0.01, True)]
    sporadic(a, b, 3, 0.01, None)  # a few messages first: both daemons warm
    consumer = None
    for what, gap, with_consumer in rows:
        if with_consumer and consumer is None:
            # The consumer connects, and has been there a while when messages come (a
            # process that has just opened the file is taken as short-lived).
            consumer = resident(b.db)
            time.sleep(0.5)
        before = [d.proc_locks_reads() for d in (a, b)]
        times = sporadic(a, b, samples, gap, consumer if with_consumer else None)
        time.sleep(0.2)  # strace's last lines reach its file
        after = [d.proc_locks_reads() for d in (a, b)]
        reads = ("not counted (no strace)" if before[0] is None else
                 f"/proc/locks read {after[0] - before[0]} times by A, "
                 f"{after[1] - before[1]} by B")
        if VERBOSE:
            slow = sorted(range(len(times)), key=times.__getitem__)[-4:]
            print("    slowest: " + ", ".join(f"#{i} {ms(times[i])} ms" for i in slow),
                  file=sys.stderr)
        print(f"(a) {what}: CLI return -> visible in B's mqin p50 "
              f"{ms(statistics.median(times))} ms, p99 {ms(percentile(times, 0.99))} ms, "
              f"max {ms(max(times))} ms ({len(times)} samples); (b) {reads}", flush=True)
    if consumer is not None:
        consumer.close()


def inserts(a, ports, n, pace=None):
    """n plain INSERTs into A's mqout, one after another, round robin over the ports;
    returns how many failed."""
    tried, failures, _done = dbmod.plain_inserts(
        a.db, [(port, f"cli-{port}") for port in ports], n, pause=pace)
    for failure in failures if VERBOSE else ():
        print(f"    {failure}", file=sys.stderr)
    return len(failures), tried


def drained(daemons, timeout=120):
    deadline = time.monotonic() + timeout
    while any(dbmod.count(d.db, "mqout") for d in daemons):
        for d in daemons:
            d.assert_alive()
        if time.monotonic() > deadline:
            raise BenchFailure("(c) queues did not drain")
        time.sleep(0.05)


def fig_c(a, b, others, n):
    def after_start():
        a.stop()
        a.start()
        return inserts(a, [b.port], n)

    def under_load():
        dbmod.insert_series(a.db, "127.0.0.1", b.port, "flow", 2000)
        return inserts(a, [b.port], n)

    cases = [("one after another, as fast as they come", lambda: inserts(a, [b.port], n)),
             ("one after another, 5 ms apart", lambda: inserts(a, [b.port], n, lambda: 0.005)),
             ("one after another, 50 ms apart",
              lambda: inserts(a, [b.port], n // 3, lambda: 0.05)),
             ("a burst right after start-up", after_start),
             (f"one after another to {1 + len(others)} destinations",
              lambda: inserts(a, [b.port] + [d.port for d in others], n)),
             ("under load: while 2,000 rows queued before them flow out", under_load)]
    for what, run in cases:
        for with_resident in (False, True):
            conn = resident(a.db) if with_resident else None
            try:
                failed, tried = run()
            finally:
                if conn is not None:
                    conn.close()
            drained([a, b])
            beside = "beside a resident connection" if with_resident else "alone"
            print(f"(c) plain sqlite3 INSERTs, {what}, {beside}: {failed} of {tried} "
                  f"failed", flush=True)


def flood(a, b, n, per_side):
    """Both daemons send n messages to each other while plain INSERTs go into both
    databases in turn."""
    dbmod.insert_series(a.db, "127.0.0.1", b.port, "flood", n)
    dbmod.insert_series(b.db, "127.0.0.1", a.port, "flood", n)
    failed = 0
    for i in range(per_side):
        failed += bool(dbmod.plain_insert(a.db, "127.0.0.1", b.port, "cli", f"a-{i}"))
        failed += bool(dbmod.plain_insert(b.db, "127.0.0.1", a.port, "cli", f"b-{i}"))
    still = dbmod.count(a.db, "mqout") + dbmod.count(b.db, "mqout")
    drained([a, b], 300)
    print(f"(c) plain sqlite3 INSERTs into both databases during a two-way flood "
          f"({n:,} each way; {still:,} still queued when the INSERTs were done): {failed} "
          f"of {2 * per_side} failed ({100 * failed / (2 * per_side):.1f}%)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m tests.bench_latency")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="ac", help="figures: a (with b), c")
    args = parser.parse_args(argv)
    samples = 20 if args.quick else 60
    n = 100 if args.quick else 300
    if not STRACE:
        print("(b) strace is not installed: /proc/locks reads are not counted")
    with tempfile.TemporaryDirectory(prefix="tinymq-bench-lat-") as tmp:
        a, b = TracedDaemon(tmp, "a"), TracedDaemon(tmp, "b")
        others = [Daemon(tmp, f"dest{i}") for i in range(3)]
        daemons = [a, b] + others
        try:
            for d in daemons:
                d.start(wait=False)
            for d in daemons:
                d.wait_ready(30)
            if "a" in args.only:
                fig_a(a, b, samples)
            if "c" in args.only:
                fig_c(a, b, others, n)
                flood(a, b, 5000 if args.quick else 20000, n)
        except BenchFailure as e:
            print(f"bench_latency: {e}", file=sys.stderr)
            for d in daemons:
                if d.proc is not None:
                    print(f"----- {d.name} -----\n{d.stderr_tail(20, whole=True)}",
                          file=sys.stderr)
            return 1
        finally:
            for d in daemons:
                d.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
