"""`make bench`, second part: tinymq under adversity.

    /usr/bin/python3 -m tests.bench_adversity [--quick] [--only abcde]

One line per figure. These are measurements, not pass/fail tests, except that wherever
messages move, every one must arrive exactly once and in order (checked in SQL on the
receiver's mqin); a violation, a hang or a dead daemon makes the run exit 1 with the
daemon's stderr tail.

(a) Throughput through the chaos relay (tests/support/relay.py, as its own process) with
    the same loss on the forward (DATA) and reverse (ACK) path: 0, 1, 10, 30 %; rounds
    of all levels in turn, medians, and the 10 %/lossless ratio (target >= 30 %).
(b) One million rows queued for a port where nothing listens: time from process start
    to READY=1 (target 2 s), RSS at 2 and 10 s and VmHWM (it must stay flat), what
    application INSERTs see meanwhile, stop and restart with the backlog, then how long
    it takes to drain once a receiver starts on that port.
    (b2) The same backlog in a database the application made (README.md's two tables) before
    tinymqd first ran: its rows have no sequence numbers yet; the drain gets 30 s.
(c) Isolation, sized for 2 cores: 1 sender, 10 live destinations (real daemons) and 990
    dead ones (ports on 127.0.0.2 where nothing listens, 5 rows each); latency to the
    live ones before, during the first seconds, and once all dead ones are unreachable
    and retried.
(d) One 16 MiB BLOB through the relay, lossless and with 5 % loss both ways: time to
    deliver, sha256 on arrival.
(e) Many senders, one receiver, all real daemons (a sender costs about 25 MB and 0.1 s of
    CPU to start): 20 senders x 5,000 and 100 senders x 1,000 messages, queued while the
    receiver is down; it greets them with HELLO when it starts; aggregate throughput,
    exactly once and in order per sender. All run on the same 2 cores, so the senders'
    CPU is part of the figure.

Dead destinations use ports below the kernel's ephemeral range (20000-31999), so that no
daemon of a concurrently running test can be listening there and receive these rows.
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

from tests.bench import latencies, percentile
from tests.support import db as dbmod
from tests.support.checks import assert_exactly_once_in_order
from tests.support.daemon import Daemon, check_daemons
from tests.support.observe import cpu_seconds, memory_mb
from tests.support.relay import RelayProcess
from tests.support.wait import wait_until

QUIET_PORTS = (20000, 32000)  # below ip_local_port_range: free_udp_port never picks them
DEAD_HOST = "127.0.0.2"  # loopback, but an address no test daemon binds
MiB = 1 << 20


class BenchFailure(AssertionError):
    pass


# -- small tools ---------------------------------------------------------------------

def wakeups(pid):
    """Voluntary context switches of all threads of a process (how often it slept and
    was woken)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def quiet_ports(n, host="127.0.0.1", avoid=()):
    """n ports in QUIET_PORTS that nothing has bound on host or the wildcard now."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    chosen = set()
    candidates = list(range(*QUIET_PORTS))
    rng.shuffle(candidates)
    for port in candidates:
        if port in avoid:
            continue
        try:
            for addr in (host, "0.0.0.0"):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((addr, port))
        except OSError:
            continue
        chosen.add(port)
        if len(chosen) == n:
            return sorted(chosen)
    raise BenchFailure(f"could not find {n} quiet UDP ports")


def insert_series(db, host, port, tag, n, size):
    """n rows, token=tag, data '<tag>-<i:06d>' padded to about `size` bytes, in one
    INSERT statement."""
    return dbmod.insert_series(db, host, port, tag, n, pad=max(0, size - len(tag) - 7))


def check_series(db, tag, n, what):
    """Exactly once and in order: the receiver's mqin holds <tag>-1 .. <tag>-n."""
    assert_exactly_once_in_order(dbmod.series_numbers(db, tag), range(1, n + 1), what)


def connect(db):
    """An application's autocommit connection (it waits up to 30 s for the lock)."""
    return sqlite3.connect(str(db), timeout=30, isolation_level=None)


def udp_counters():
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}


def waited(predicate, timeout, what, interval=0.005):
    """wait_until(); returns the moment the predicate was seen true (for timings)."""
    wait_until(predicate, timeout, what, interval=interval)
    return time.monotonic()


class Context:
    """Daemons and relay processes of one run, cleaned up at the end."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.daemons = []
        self.relays = []

    def daemon(self, name, **config):
        d = Daemon(self.tmp, name, **config)
        self.daemons.append(d)
        return d

    def start(self, *daemons, timeout=60):
        """Start several daemons at once; wait for READY=1 from each."""
        for d in daemons:
            d.start(wait=False)
        for d in daemons:
            d.wait_ready(timeout)
        return daemons

    def relay(self, target_port, seed, **faults):
        """The chaos relay as its own process, so that it does not compete with this
        one for the interpreter."""
        r = RelayProcess(target_port, seed, **faults)
        self.relays.append(r)
        return r

    def stop(self, *daemons):
        """SIGTERM to all at once, then wait: each must exit 0 (README.md: within 2 s; more
        is tolerated here when many stop together on 2 cores). Returns the slowest."""
        t0 = time.monotonic()
        running = [d for d in daemons if d.running]
        for d in running:
            d.send_signal(signal.SIGTERM)
        slowest = 0.0
        for d in running:
            try:
                rc = d.proc.wait(timeout=max(0.1, t0 + 10 - time.monotonic()))
            except subprocess.TimeoutExpired:
                d.kill()
                raise BenchFailure(f"{d.name} still running 10 s after SIGTERM; "
                                   f"stderr:\n{d.stderr_tail(20)}") from None
            slowest = max(slowest, time.monotonic() - t0)
            if rc != 0:
                raise BenchFailure(f"{d.name} exited {rc} after SIGTERM; "
                                   f"stderr:\n{d.stderr_tail(20)}")
        return slowest

    def cleanup(self):
        for r in self.relays:
            r.stop()
        for d in self.daemons:
            d.cleanup()

    def stderr_tails(self, lines=15):
        out = []
        for d in self.daemons:
            if d.proc is None:
                continue
            text = d.stderr_tail(lines, whole=True)
            if "Traceback" in text or "ERROR" in text or "CRITICAL" in text or (
                    d.proc.poll() not in (None, 0)):
                out.append(f"----- {d.name} (port {d.port}, rc={d.proc.poll()}) -----\n{text}")
        return "\n".join(out)


def drops(stats):
    f, r = stats.get("forward", {}), stats.get("reverse", {})
    return (f"relay dropped {f.get('dropped', 0)}/{f.get('received', 0)} DATA, "
            f"{r.get('dropped', 0)}/{r.get('received', 0)} ACK datagrams")


# -- (a) throughput through loss -------------------------------------------------------

def fig_a(ctx, quick):
    n, size = (3000 if quick else 10000), 100
    levels = ("direct", 0, 1, 10, 30)  # direct: no relay, for reference
    repeats = 1 if quick else 5
    a, b = ctx.daemon("a-sender"), ctx.daemon("a-receiver")
    ctx.start(a, b)
    rates = {loss: [] for loss in levels}
    stats = {loss: [] for loss in levels}
    inn = connect(b.db)
    try:
        # Rounds of every level in turn, so that drift on a shared machine hits all alike.
        for rep in range(repeats):
            for loss in levels:
                relay = None
                port = b.port
                if loss != "direct":
                    relay = ctx.relay(b.port, seed=1000 * rep + loss, loss=loss)
                    port = relay.port
                tag = f"a{loss}r{rep}"
                base = dbmod.max_x(inn)
                t0 = time.monotonic()
                insert_series(a.db, "127.0.0.1", port, tag, n, size)
                t1 = waited(lambda: dbmod.max_x(inn) - base >= n, 300,
                            f"(a) {n} messages, loss {loss}")
                wait_until(lambda: dbmod.count(a.db, "mqout") == 0, 60,
                           f"(a) sender's mqout to empty, loss {loss}")
                check_series(b.db, tag, n, f"(a) loss {loss}, run {rep + 1}")
                rates[loss].append(n / (t1 - t0))
                stats[loss].append(relay.stop() if relay else {})
    finally:
        inn.close()
    for loss in levels:
        runs = ", ".join(f"{r:,.0f}" for r in rates[loss])
        what = ("direct, no relay (reference)" if loss == "direct"
                else f"through relay, {loss:2d}% loss both ways")
        extra = f"; {drops(stats[loss][-1])} in the last run" if loss != "direct" else ""
        print(f"(a) throughput {what}: {statistics.median(rates[loss]):,.0f} messages/s, "
              f"median of {repeats} x {n:,} x {size} B ({runs}{extra}); exactly once in "
              f"order", flush=True)
    ratios = [r10 / r0 for r10, r0 in zip(rates[10], rates[0])]
    ratio = statistics.median(ratios)
    print(f"(a) 10% loss vs lossless through the same relay: {100 * ratio:.0f}% "
          f"(median of per-round ratios {', '.join(f'{100 * r:.0f}%' for r in ratios)}; "
          f"target >= 30%: {'met' if ratio >= 0.3 else 'NOT met'})", flush=True)
    ctx.stop(a, b)


# -- (b) a million rows queued ------------------------------------------------------------

def busy_insert(db, port, busy_ms):
    """One application INSERT with Python's sqlite3 and that busy timeout: returns the
    seconds BEGIN IMMEDIATE waited for the write lock (the COMMIT may also run an
    automatic checkpoint, which is not the daemon's doing)."""
    sql = ("INSERT INTO mqout (host, port, token, data) VALUES "
           f"('127.0.0.1', {port}, 'probe', 'an application row');")
    con = sqlite3.connect(str(db), timeout=busy_ms / 1000, isolation_level=None)
    try:
        t = time.monotonic()
        con.execute("BEGIN IMMEDIATE")
        waited = time.monotonic() - t
        con.execute(sql)
        con.execute("COMMIT")
    finally:
        con.close()
    return waited


def watch_backlog(d, t0, until, probe_port, rss):
    """Until `until` s after t0: RSS samples into rss {second: MB}, and application
    INSERTs (to probe_port, where nothing listens) beside the daemon's own writes.
    Returns (CLI failures, CLI tries, Python INSERT seconds)."""
    fails = tries = 0
    waits = []
    while (now := time.monotonic() - t0) < until:
        rss[round(now, 1)] = memory_mb(d.pid, "VmRSS")
        tries += 1
        fails += bool(dbmod.plain_insert(d.db, "127.0.0.1", probe_port, "probe",
                                         "an application row"))
        waits.append(busy_insert(d.db, probe_port, 30000))
        check_daemons()
        time.sleep(0.2)
    return fails, tries, waits


def fig_b(ctx, quick, drain_limit):
    """(b) the backlog queued in an existing tinymq database while the daemon is stopped;
    (b2) the same backlog in a database the application made with README.md's two tables
    before tinymqd first ran (as after an upgrade from a version that numbered rows
    later): whatever the daemon has to do with such rows, it must not delay READY=1."""
    n = 200_000 if quick else 1_000_000
    backlog(ctx, "b", n, premade=False, drain_limit=drain_limit)
    backlog(ctx, "b2", n, premade=True, drain_limit=min(drain_limit, 10 if quick else 30))


def backlog(ctx, fig, n, premade, drain_limit):
    size = 100
    dest_port, probe_port = quiet_ports(2)
    a = ctx.daemon(f"{fig}-sender")
    if premade:
        dbmod.make_app_database(a.db, wal=True)
        where = "in a database the application made before tinymqd first ran"
    else:
        a.start()  # creates the database and its tables, as on a first install
        a.stop()
        where = "while tinymqd was stopped"
    t = time.monotonic()
    insert_series(a.db, "127.0.0.1", dest_port, "big", n, size)
    insert_s = time.monotonic() - t
    t0 = time.monotonic()
    a.start(wait=False)
    a.wait_ready(30)
    ready = a.ready_at - t0
    rss = {}
    cpu0 = cpu_seconds(a.pid)
    fails, tries, waits = watch_backlog(a, t0, 10.0, probe_port, rss)
    hwm = memory_mb(a.pid, "VmHWM")
    cpu = cpu_seconds(a.pid) - cpu0
    numbered = dbmod.count(a.db, "mqout", "token = 'big' AND stream IS NOT NULL")
    errors = dbmod.count(a.db, "mqout", "token = 'big' AND last_error IS NOT NULL")
    at2 = min(rss.items(), key=lambda kv: abs(kv[0] - 2))[1]
    at10 = rss[max(rss)]
    print(f"({fig}) {n:,} rows ({size} B) queued {where}, for a port where nothing listens "
          f"(one INSERT statement, {insert_s:.1f} s): READY=1 {ready:.2f} s after process "
          f"start (target <= 2 s: {'met' if ready <= 2 else 'NOT met'})", flush=True)
    print(f"({fig}) sender memory with the backlog: RSS {at2:.1f} MB at 2 s, {at10:.1f} MB at "
          f"10 s, peak (VmHWM) {hwm:.1f} MB: "
          f"{'flat' if at10 <= at2 * 1.25 + 5 else 'GROWING'}; after 10 s {numbered:,} rows "
          f"numbered (stream, seq), {errors:,} carry last_error; CPU "
          f"{100 * cpu / (10 - ready):.0f}% of a core", flush=True)
    print(f"({fig}) application INSERTs meanwhile: plain sqlite3 CLI without busy timeout "
          f"{fails} of {tries} failed ('database is locked'); with a busy timeout the wait "
          f"for the write lock was p50 {1000 * statistics.median(waits):.1f} ms, max "
          f"{1000 * max(waits):.0f} ms",
          flush=True)

    if not premade:
        # Stop and start again with the backlog (the streams exist, rows are numbered).
        took = ctx.stop(a)
        t0 = time.monotonic()
        a.start(wait=False)
        a.wait_ready(30)
        print(f"({fig}) with that backlog: SIGTERM -> exit 0 in {took:.2f} s; restarted: "
              f"READY=1 {a.ready_at - t0:.2f} s after process start", flush=True)

    # The receiver appears on that port: how long does the backlog take to drain?
    b = ctx.daemon(f"{fig}-receiver", port=dest_port)
    inn = None
    try:
        t1 = time.monotonic()
        b.start()
        inn = connect(b.db)
        deadline = t1 + drain_limit
        while True:
            got = dbmod.max_x(inn)
            if got >= n or time.monotonic() > deadline:
                break
            check_daemons()
            time.sleep(0.05)
        t2 = time.monotonic()
    finally:
        if inn is not None:
            inn.close()
    hwm_after = memory_mb(a.pid, "VmHWM")
    recv_hwm = memory_mb(b.pid, "VmHWM")
    rate = got / (t2 - t1)
    if got >= n:
        wait_until(lambda: dbmod.count(a.db, "mqout", "token = 'big'") == 0, 60,
                   f"({fig}) sender's mqout to empty after the drain", interval=0.1)
        check_series(b.db, "big", n, f"({fig}) drain")
        print(f"({fig}) drain: all {n:,} delivered {t2 - t1:.1f} s after the receiver started "
              f"({rate:,.0f} messages/s); peak RSS sender {hwm_after:.1f} MB, receiver "
              f"{recv_hwm:.1f} MB; exactly once in order", flush=True)
    else:
        # A partial drain is still checked: a gap-free, duplicate-free prefix.
        check_prefix(b.db, "big", f"({fig}) partial drain")
        print(f"({fig}) drain: only {got:,} of {n:,} delivered in the {drain_limit:.0f} s "
              f"allowed ({rate:,.0f} messages/s: all would take about "
              f"{n / max(rate, 1) / 60:.0f} min); peak RSS sender {hwm_after:.1f} MB; "
              f"exactly once in order so far", flush=True)
    ctx.stop(a, b)


def check_prefix(db, tag, what):
    """What arrived so far is <tag>-1 .. <tag>-k, each once, in order."""
    numbers = dbmod.series_numbers(db, tag)
    assert_exactly_once_in_order(numbers, range(1, len(numbers) + 1), f"{what} (a prefix)")


# -- (c) isolation: live destinations beside many dead ones -------------------------------

def fig_c(ctx, quick):
    n_live, n_dead = (5, 495) if quick else (10, 990)
    per_dead = 5
    samples = 100 if quick else 300
    a = ctx.daemon("c-sender")
    live = [ctx.daemon(f"c-live{i:02d}") for i in range(n_live)]
    ctx.start(a, *live)
    # Warm up each path once (first contact, RTT estimate), as in steady use.
    latencies(a, live, n_live, "warm", gap=0)
    base = latencies(a, live, samples, "base")
    dead_ports = quiet_ports(n_dead, DEAD_HOST)
    con = connect(a.db)
    t0 = time.monotonic()
    con.execute(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
        "INSERT INTO mqout (host, port, token, data) SELECT ?, j.value, 'dead', "
        "printf('dead-%05d-%02d', j.value, c.i) FROM json_each(?) AS j, c "
        "ORDER BY c.i, j.key", (per_dead, DEAD_HOST, json.dumps(dead_ports)))
    con.close()
    # During the first seconds: rows numbered, first sends, first timeouts.
    during = latencies(a, live, samples // 2, "early")
    # Then steady state: every dead destination declared unreachable (last_error set).
    total_dead = n_dead * per_dead
    wait_until(lambda: dbmod.count(a.db, "mqout", "token = 'dead' AND last_error IS NOT NULL")
               == total_dead, 120, f"(c) last_error on all {total_dead} dead rows",
               interval=0.2)
    marked = time.monotonic() - t0
    cpu0, w0 = cpu_seconds(a.pid), time.monotonic()
    steady = latencies(a, live, samples, "steady")
    cpu = 100 * (cpu_seconds(a.pid) - cpu0) / (time.monotonic() - w0)
    cpu_idle0, w1 = cpu_seconds(a.pid), time.monotonic()
    time.sleep(3)  # the measurement's duration
    cpu_idle = 100 * (cpu_seconds(a.pid) - cpu_idle0) / (time.monotonic() - w1)
    left = dbmod.count(a.db, "mqout", "token = 'dead'")
    if left != total_dead:
        raise BenchFailure(f"(c) {total_dead - left} of the {total_dead} rows for dead "
                           f"destinations left mqout")
    # Exactly once, in order: each marker once, at the live daemon it was sent to.
    for k, d in enumerate(live):
        for tag, count in (("warm", n_live), ("base", samples), ("early", samples // 2),
                           ("steady", samples)):
            assert_exactly_once_in_order(dbmod.series_numbers(d.db, tag),
                                         range(k, count, n_live), f"(c) {d.name}/{tag}")

    def fmt(t):
        return f"p50 {1000 * statistics.median(t):.2f} ms, p99 {1000 * percentile(t, 0.99):.2f} ms"

    print(f"(c) design: 1 sender, {n_live} live destinations (real daemons), {n_dead} dead "
          f"ones ({DEAD_HOST}, ports where nothing listens) with {per_dead} rows each", flush=True)
    print(f"(c) latency to live destinations, no dead ones queued: {fmt(base)} "
          f"({len(base)} samples)", flush=True)
    print(f"(c) ... first seconds after {total_dead:,} rows for {n_dead} dead destinations "
          f"were queued: {fmt(during)} ({len(during)} samples)", flush=True)
    print(f"(c) ... all {n_dead} dead ones unreachable (last_error set after {marked:.1f} s) "
          f"and retried every retry_max: {fmt(steady)} ({len(steady)} samples); "
          f"p99 {percentile(steady, 0.99) / percentile(base, 0.99):.1f}x the baseline; "
          f"sender CPU {cpu:.0f}% while measuring, {cpu_idle:.0f}% retrying alone; "
          f"dead rows all kept; exactly once in order", flush=True)
    ctx.stop(a, *live)


# -- (d) 16 MiB through 5 % loss -----------------------------------------------------------

def fig_d(ctx, quick):
    size = 16 * MiB
    loss = 5
    a, b = ctx.daemon("d-sender"), ctx.daemon("d-receiver")
    ctx.start(a, b)
    blob = random.Random(16).randbytes(size)
    digest = hashlib.sha256(blob).hexdigest()
    results = {}
    inn = connect(b.db)
    repeats = 1 if quick else 3
    runs = [(rep, label, faults) for rep in range(repeats)
            for label, faults in (("lossless", {}), (f"{loss}% loss both ways", {"loss": loss}))]
    try:
        for rep, label, faults in runs:
            relay = ctx.relay(b.port, seed=16 + rep, **faults)
            token = f"blob-{rep}-{len(results.get(label, []))}-{label[:2]}"
            base = dbmod.max_x(inn)
            out = connect(a.db)
            t0 = time.monotonic()
            out.execute("INSERT INTO mqout (host, port, token, data) VALUES ('127.0.0.1', ?, ?, ?)",
                        (relay.port, token, blob))
            out.close()
            t1 = waited(lambda: dbmod.max_x(inn) > base, 300, f"(d) 16 MiB message ({label})",
                        interval=0.01)
            wait_until(lambda: dbmod.count(a.db, "mqout") == 0, 60,
                       "(d) sender's mqout to empty")
            rows = inn.execute("SELECT typeof(data), data FROM mqin WHERE token = ?",
                               (token,)).fetchall()
            if len(rows) != 1 or rows[0][0] != "blob" or \
                    hashlib.sha256(rows[0][1]).hexdigest() != digest:
                raise BenchFailure(f"(d) {label}: {len(rows)} rows, types "
                                   f"{[r[0] for r in rows]}: not the 16 MiB BLOB exactly once")
            results.setdefault(label, []).append((t1 - t0, relay.stop()))
    finally:
        inn.close()
    for label, got in results.items():
        took = statistics.median(t for t, _ in got)
        print(f"(d) one 16 MiB BLOB through the relay, {label}: delivered in {took:.2f} s "
              f"median of {len(got)} ({', '.join(f'{t:.2f}' for t, _ in got)} s; "
              f"{size / MiB / took:.1f} MiB/s); {drops(got[-1][1])} in the last run; "
              f"sha256 matches, exactly once", flush=True)
    ctx.stop(a, b)


# -- (e) many senders, one receiver ----------------------------------------------------------

def fig_e(ctx, quick):
    designs = [(10, 3000)] if quick else [(20, 5000), (100, 1000)]
    for n_senders, per in designs:
        many_senders(ctx, n_senders, per)


def many_senders(ctx, n_senders, per, size=100):
    recv = ctx.daemon(f"e{n_senders}-receiver")
    senders = [ctx.daemon(f"e{n_senders}-sender{i:03d}") for i in range(n_senders)]
    t = time.monotonic()
    ctx.start(recv, *senders)
    startup = time.monotonic() - t
    # First contact, so that the receiver knows its senders (tinymq_rx) and greets them
    # with HELLO when it comes back.
    for s in senders:
        insert_series(s.db, "127.0.0.1", recv.port, f"hi{s.name[-3:]}", 1, 10)
    wait_until(lambda: dbmod.count(recv.db, "mqin") == n_senders, 60,
               "(e) first contact from every sender", interval=0.05)
    recv.stop()
    # Each sender gets its backlog while the receiver is down.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: insert_series(s.db, "127.0.0.1", recv.port,
                                              f"s{s.name[-3:]}", per, size), senders))
    cpu_senders = sum(cpu_seconds(s.pid) for s in senders)
    woke = sum(wakeups(s.pid) for s in senders)
    udp = udp_counters()
    t0 = time.monotonic()
    recv.start()
    ready = recv.ready_at - t0
    inn = connect(recv.db)
    base = n_senders  # the first-contact rows
    total = n_senders * per
    try:
        t1 = waited(lambda: dbmod.max_x(inn) - base >= total, 300,
                    f"(e) {total} messages from {n_senders} senders", interval=0.01)
        cpu_recv = cpu_seconds(recv.pid)
        cpu_senders = sum(cpu_seconds(s.pid) for s in senders) - cpu_senders
        woke = sum(wakeups(s.pid) for s in senders) - woke
        udp = {k: v - udp[k] for k, v in udp_counters().items()}
        finish = inn.execute("SELECT token, max(x) FROM mqin WHERE x > ? GROUP BY token",
                             (base,)).fetchall()
    finally:
        inn.close()
    for s in senders:
        check_series(recv.db, f"s{s.name[-3:]}", per, f"(e) from {s.name}")
    wait_until(lambda: all(dbmod.count(s.db, "mqout") == 0 for s in senders), 60,
               "(e) every sender's mqout to empty", interval=0.1)
    fractions = sorted((x - base) / total for _, x in finish)
    rss = [memory_mb(s.pid, "VmHWM") for s in senders]
    busy = 100 * (cpu_recv + cpu_senders) / (t1 - t0) / os.cpu_count()
    print(f"(e) design: {n_senders} real sender daemons (all started in {startup:.1f} s; peak "
          f"RSS {min(rss):.0f}-{max(rss):.0f} MB each), {per:,} messages of {size} B each, "
          f"queued while the receiver was down; it greets them with HELLO on start", flush=True)
    print(f"(e) {n_senders} senders -> 1 receiver: {total:,} delivered {t1 - t0:.2f} s after "
          f"the receiver was started (READY=1 after {ready:.2f} s): "
          f"{total / (t1 - t0):,.0f} messages/s aggregate; fastest sender done at "
          f"{100 * fractions[0]:.0f}% of the rows; CPU used: receiver {cpu_recv:.1f} s, "
          f"senders {cpu_senders:.1f} s ({busy:.0f}% of the {os.cpu_count()} cores; senders' "
          f"threads woke {woke / total:.1f} times per message); {udp['RcvbufErrors']} UDP "
          f"receive-buffer overflows; exactly once in order per sender", flush=True)
    ctx.stop(recv, *senders)


# -- main ------------------------------------------------------------------------------------

FIGURES = {"a": fig_a, "b": fig_b, "c": fig_c, "d": fig_d, "e": fig_e}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m tests.bench_adversity")
    parser.add_argument("--quick", action="store_true", help="smaller figures (about a minute)")
    parser.add_argument("--only", default="abcde", help="figures to run, e.g. --only bd")
    parser.add_argument("--drain-limit", type=float, default=150.0,
                        help="seconds allowed for draining the backlog in (b)")
    args = parser.parse_args(argv)
    failures = []
    started = time.monotonic()
    for key in args.only:
        fn = FIGURES[key]
        with tempfile.TemporaryDirectory(prefix=f"tinymq-bench-{key}-") as tmp:
            ctx = Context(tmp)
            try:
                if key == "b":
                    fn(ctx, args.quick, args.drain_limit)
                else:
                    fn(ctx, args.quick)
            except Exception as exc:  # noqa: BLE001 - report, go on with the other figures
                failures.append(key)
                print(f"({key}) FAILED: {exc}", flush=True)
                if not isinstance(exc, AssertionError):
                    traceback.print_exc()
                tails = ctx.stderr_tails()
                if tails:
                    print(tails, flush=True)
            finally:
                ctx.cleanup()
    print(f"adversity figures took {time.monotonic() - started:.0f} s"
          + (f"; FAILED: {', '.join(failures)}" if failures else ""), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
