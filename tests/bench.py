"""`make bench`: figures for tinymq on this machine (two daemons on loopback).

Prints throughput, latency from a separate process's INSERT to the peer's mqin, how many
plain `sqlite3` INSERTs (no busy timeout) fail while messages stream in and while both
daemons flood each other, idle CPU and peak memory. These are measurements, not tests:
nothing here passes or fails, except that every message must arrive exactly once, in
order.
"""

import argparse
import base64
import os
import sqlite3
import statistics
import sys
import tempfile
import time

from tests.support import db as dbmod
from tests.support.checks import assert_exactly_once_in_order
from tests.support.daemon import Daemon
from tests.support.observe import cpu_seconds, memory_mb
from tests.support.wait import wait_until


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def throughput(a, b, n, size, tag="bench"):
    """n messages of about `size` bytes pre-inserted in one transaction; time from its
    commit until all are in the receiver's mqin and the sender's mqout is empty."""
    out = dbmod.connect_ro(a.db)
    inn = dbmod.connect_ro(b.db)
    before = dbmod.max_x(inn)
    t_insert = time.monotonic()
    dbmod.insert_series(a.db, "127.0.0.1", b.port, tag, n, pad=size - len(tag) - 7)
    t0 = time.monotonic()  # committed: the daemon sees them all from here
    inserting = t0 - t_insert
    wait_until(lambda: dbmod.max_x(inn) - before >= n and
               not out.execute("SELECT 1 FROM mqout LIMIT 1").fetchone(), 300,
               f"{n} messages", interval=0.002)
    elapsed = time.monotonic() - t0
    out.close()
    inn.close()
    assert_exactly_once_in_order(dbmod.series_numbers(b.db, tag), range(1, n + 1), tag)
    return n / elapsed, elapsed, inserting


def latencies(a, receivers, samples, tag, gap=0.01, limit=15.0):
    """INSERT committed in this process into a's mqout (round robin over `receivers`) ->
    row visible in that receiver's mqin. Data '<tag>-<i:07d>', i = 0..samples-1. Returns
    the latencies in seconds, sorted."""
    out = sqlite3.connect(str(a.db), timeout=30, isolation_level=None)
    conns = [dbmod.connect_ro(r.db) for r in receivers]
    times = []
    try:
        for i in range(samples):
            k = i % len(receivers)
            marker = f"{tag}-{i:07d}"
            t0 = time.monotonic()
            out.execute("INSERT INTO mqout (host, port, token, data) VALUES "
                        "('127.0.0.1', ?, ?, ?)", (receivers[k].port, tag, marker))
            wait_until(lambda: conns[k].execute(
                "SELECT 1 FROM mqin WHERE x > (SELECT max(x) - 2 FROM mqin) AND data = ?",
                (marker,)).fetchone(), limit,
                f"message {marker} to {receivers[k].name}", interval=0.0002)
            times.append(time.monotonic() - t0)
            time.sleep(gap)  # pacing the samples
    finally:
        out.close()
        for con in conns:
            con.close()
    return sorted(times)


def cli_inserts_under_load(a, b, n_flow, n_cli):
    """n_cli plain sqlite3 INSERTs into the receiver's database, one after another, while
    n_flow messages flow into it; returns the failures."""
    dbmod.insert_series(a.db, "127.0.0.1", b.port, "load", n_flow, pad=93)
    _tried, failures, done = dbmod.plain_inserts(b.db, [(a.port, "cli")], n_cli)
    ok = done["cli"]
    wait_until(lambda: a.count("mqin", "token = 'cli'") >= ok, 120, "CLI-enqueued messages")
    assert_exactly_once_in_order(dbmod.series_numbers(a.db, "cli"), range(1, ok + 1), "cli")
    return len(failures)


def cli_inserts_under_flood(a, b, n_flow, least=150, most=400):
    """Both daemons flood each other with n_flow messages; meanwhile plain sqlite3
    INSERTs into A's mqout, one after another, until the flood has arrived (at least
    `least`, at most `most`). Returns (tried, failures)."""
    dbmod.insert_series(b.db, "127.0.0.1", a.port, "flood-in", n_flow, pad=93)
    dbmod.insert_series(a.db, "127.0.0.1", b.port, "flood-out", n_flow, pad=93)
    inn = dbmod.connect_ro(a.db)
    try:
        tried, failures, done = dbmod.plain_inserts(
            a.db, [(b.port, "busy")], most, least=least,
            until=lambda: inn.execute("SELECT count(*) FROM mqin WHERE token = 'flood-in'")
            .fetchone()[0] >= n_flow)
    finally:
        inn.close()
    ok = done["busy"]
    for sender, receiver, tag, n in ((b, a, "flood-in", n_flow), (a, b, "flood-out", n_flow),
                                     (a, b, "busy", ok)):
        wait_until(lambda: receiver.count("mqin", "token = ?", (tag,)) >= n, 120,
                   f"{tag}: {n} delivered")
        assert_exactly_once_in_order(dbmod.series_numbers(receiver.db, tag), range(1, n + 1),
                                     tag)
    return tried, failures


def keyed_pair(tmp):
    """Two daemons sealing everything with one pre-shared key, as README says."""
    path = os.path.join(tmp, "keys.yaml")
    with open(path, "w") as f:
        f.write(f"bench: {base64.b64encode(os.urandom(32)).decode()}\n")
    os.chmod(path, 0o640)
    return [Daemon(tmp, name, key_file=path, peers={"*": "bench"}) for name in ("ka", "kb")]


def keyed_figures(tmp, args, a, b, plain_p50, rounds=3):
    """Throughput and latency with sealed datagrams, beside the unkeyed figures of the
    same run: throughput rounds alternate between the unkeyed pair (a, b) and the keyed
    one, so that the machine's load weighs on both alike; medians are compared."""
    ka, kb = keyed_pair(tmp)
    try:
        ka.start()
        kb.start()
        plain, keyed = [], []
        for i in range(rounds):
            plain.append(throughput(a, b, args.messages, args.size, f"pround{i}")[0])
            keyed.append(throughput(ka, kb, args.messages, args.size, f"kround{i}")[0])
        rate, plain_rate = statistics.median(keyed), statistics.median(plain)
        times = latencies(ka, [kb], args.latency_samples, "klat")
        p50 = statistics.median(times)
        print(f"keyed (AES-256-GCM): throughput {rate:,.0f} messages/s, median of {rounds} "
              f"rounds alternating with unkeyed ones ({_rates(keyed)}; unkeyed "
              f"{_rates(plain)}): {100 * rate / plain_rate:.0f}% of unkeyed; latency p50 "
              f"{p50 * 1000:.2f} ms ({(p50 - plain_p50) * 1000:+.2f} ms against unkeyed), "
              f"p99 {percentile(times, 0.99) * 1000:.2f} ms", flush=True)
    finally:
        ka.cleanup()
        kb.cleanup()


def _rates(rates):
    return ", ".join(f"{r:,.0f}" for r in rates)


def idle_cpu(daemon, seconds):
    before = cpu_seconds(daemon.pid)
    time.sleep(seconds)  # the measurement's duration
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
                  f"pre-inserted, delivered in {elapsed:.2f} s, exactly once in order; the "
                  f"INSERT itself took {inserting:.2f} s with the numbering trigger)", flush=True)
            times = latencies(a, [b], args.latency_samples, "lat")
            print(f"latency INSERT -> peer's mqin: p50 {statistics.median(times) * 1000:.2f} ms, "
                  f"p99 {percentile(times, 0.99) * 1000:.2f} ms ({args.latency_samples} "
                  f"samples)", flush=True)
            keyed_figures(tmp, args, a, b, statistics.median(times))
            failures = cli_inserts_under_load(a, b, args.messages, args.cli_inserts)
            print(f"sqlite3 CLI inserts without busy timeout while {args.messages} messages "
                  f"flow in: {failures} of {args.cli_inserts} failed "
                  f"({100 * failures / args.cli_inserts:.2f}%)", flush=True)
            tried, failed = cli_inserts_under_flood(a, b, args.messages)
            example = f"; e.g. {failed[0]!r}" if failed else ""
            print(f"sqlite3 CLI inserts without busy timeout while the two daemons flood each "
                  f"other with {args.messages} messages each way: {len(failed)} of {tried} "
                  f"failed ({100 * len(failed) / max(tried, 1):.1f}%){example}", flush=True)
            print(f"idle CPU over {args.idle_seconds:.0f} s: sender "
                  f"{idle_cpu(a, args.idle_seconds):.2f}% of a core", end="")
            print(f", receiver {idle_cpu(b, args.idle_seconds):.2f}%")
            print(f"peak RSS: sender {memory_mb(a.pid, 'VmHWM'):.1f} MB, "
                  f"receiver {memory_mb(b.pid, 'VmHWM'):.1f} MB")
        finally:
            a.cleanup()
            b.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
