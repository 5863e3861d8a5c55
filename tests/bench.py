"""`make bench`: figures for tinymq on this machine (two daemons on loopback).

Prints throughput, latency from a separate process's INSERT to the peer's mqin, idle
CPU and peak memory. These are measurements, not tests: nothing here passes or fails,
except that every message must arrive exactly once.
"""

import argparse
import concurrent.futures
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from tests.support.daemon import Daemon

CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.002)


def count(conn, table):
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def throughput(a, b, n, size):
    """n messages of `size` bytes pre-inserted in one transaction; time from its commit
    until all are in the receiver's mqin and the sender's mqout is empty."""
    out = sqlite3.connect(a.db, timeout=10, isolation_level=None)
    inn = sqlite3.connect(b.db, timeout=10)
    before = count(inn, "mqin")
    t_insert = time.monotonic()
    out.execute(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
        "INSERT INTO mqout (host, port, token, data) "
        "SELECT '127.0.0.1', ?, 'bench', printf('%0*d', ?, i) FROM c", (n, b.port, size))
    t0 = time.monotonic()  # committed: the daemon sees them all from here
    inserting = t0 - t_insert
    wait_for(lambda: count(inn, "mqin") - before >= n and count(out, "mqout") == 0,
             300, f"{n} messages")
    elapsed = time.monotonic() - t0
    got = inn.execute("SELECT count(*), count(DISTINCT data) FROM mqin WHERE x > "
                      "(SELECT coalesce(max(x), 0) - ? FROM mqin)", (n,)).fetchone()
    assert got == (n, n), f"exactly once violated: {got}"
    out.close()
    inn.close()
    return n / elapsed, elapsed, inserting


def latency(a, b, samples, gap):
    """Each sample: INSERT committed in this process -> row visible in the peer's mqin."""
    out = sqlite3.connect(a.db, timeout=10, isolation_level=None)
    inn = sqlite3.connect(b.db, isolation_level=None)
    times = []
    for i in range(samples):
        marker = f"latency-{i}-{time.time_ns()}"
        t0 = time.monotonic()
        out.execute("INSERT INTO mqout (host, port, token, data) VALUES ('127.0.0.1', ?, "
                    "'lat', ?)", (b.port, marker))
        while not inn.execute("SELECT 1 FROM mqin WHERE x > (SELECT max(x) - 3 FROM mqin) "
                              "AND data = ?", (marker,)).fetchone():
            if time.monotonic() - t0 > 10:
                raise SystemExit("bench: a latency sample took over 10 s")
            time.sleep(0.0002)
        times.append(time.monotonic() - t0)
        time.sleep(gap)
    out.close()
    inn.close()
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def cli_inserts_under_load(a, b, n_flow, n_cli, workers=1):
    """n_cli plain `sqlite3 DB "INSERT ..."` (no busy timeout, as users type it) into the
    receiver's database while n_flow messages flow into it; returns failures."""
    out = sqlite3.connect(a.db, timeout=10, isolation_level=None)
    out.execute(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
        "INSERT INTO mqout (host, port, token, data) "
        "SELECT '127.0.0.1', ?, 'load', printf('%0100d', i) FROM c", (n_flow, b.port))
    out.close()

    def insert(i):
        sql = (f"INSERT into mqout (host,port,token,data) VALUES "
               f"('127.0.0.1','{a.port}','cli','enqueued under load {i}');")
        proc = subprocess.run(["sqlite3", str(b.db), sql], capture_output=True, text=True)
        return proc.returncode != 0 or "locked" in proc.stderr

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        failures = sum(pool.map(insert, range(n_cli)))
    inn = sqlite3.connect(a.db, timeout=10)
    wait_for(lambda: inn.execute("SELECT count(*) FROM mqin WHERE token = 'cli'")
             .fetchone()[0] == n_cli - failures, 120, "CLI-enqueued messages")
    inn.close()
    return failures


def idle_cpu(daemon, seconds):
    before = cpu_seconds(daemon.pid)
    time.sleep(seconds)
    return 100 * (cpu_seconds(daemon.pid) - before) / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--cli-inserts", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tinymq-bench-") as tmp:
        a, b = Daemon(tmp, "a"), Daemon(tmp, "b")
        try:
            a.start()
            b.start()
            rate, elapsed, inserting = throughput(a, b, args.messages, args.size)
            print(f"throughput: {rate:,.0f} messages/s ({args.messages} x {args.size} B "
                  f"pre-inserted, delivered in {elapsed:.2f} s, exactly once; the INSERT "
                  f"itself took {inserting:.2f} s with the numbering trigger)")
            p50, p99 = latency(a, b, args.latency_samples, 0.01)
            print(f"latency INSERT -> peer's mqin: p50 {p50 * 1000:.2f} ms, "
                  f"p99 {p99 * 1000:.2f} ms ({args.latency_samples} samples)")
            failures = cli_inserts_under_load(a, b, args.messages, args.cli_inserts)
            print(f"sqlite3 CLI inserts without busy timeout while {args.messages} messages "
                  f"flow in: {failures} of {args.cli_inserts} failed "
                  f"({100 * failures / args.cli_inserts:.2f}%)")
            print(f"idle CPU over {args.idle_seconds:.0f} s: sender "
                  f"{idle_cpu(a, args.idle_seconds):.2f}% of a core", end="")
            print(f", receiver {idle_cpu(b, args.idle_seconds):.2f}%")
            print(f"peak RSS: sender {peak_rss_mb(a.pid):.1f} MB, "
                  f"receiver {peak_rss_mb(b.pid):.1f} MB")
        finally:
            a.cleanup()
            b.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
