"""A repeatable chaos run: two daemons exchange numbered messages in both directions
through misbehaving relays while each is killed (SIGKILL) and restarted at seeded random
moments. Everything random (relays, message sizes, kill moments, victims, down times)
comes from one seed, so a failing run can be repeated with the same seed (the moments
are defined by delivery progress, not by wall-clock time, so they repeat too up to the
machine's timing).

    figures = ChaosRun(make_daemon, make_relay, seed=1, n_ab=3000, n_ba=1000, kills=6).run()

keyed=True (with key_dir=, where the key file is written) runs both daemons as keyed peers
(PROTOCOL.md "Keyed peers"): one random key in a key file, peers {"*": it}, so every
datagram is sealed; the end checks then also want every message authenticated by it.

Direction is one stream of such numbered messages through a relay, for tests that
script their own faults: enqueue, check the hand-off at any moment, check the end.
"""

import base64
import functools
import hashlib
import os
import random
import time

from tests.support import db as dbmod
from tests.support.checks import assert_handoff, assert_series_delivered, series_problems
from tests.support.wait import holds_for, wait_until

FAULTS = dict(loss=10, dup=5, reorder=5, delay_ms=1, jitter_ms=5)


def payload(seed, tag, i):
    """Message i of a direction: '<tag>-<i:06d>:' and deterministic filler; about one in
    250 is 3-9 KB (several fragments), the others up to 300 bytes."""
    h = hashlib.shake_256(f"{seed}:{tag}:{i}".encode())
    sizes = h.digest(4)
    size = 3000 + int.from_bytes(sizes[:2], "big") % 6000 if sizes[2] < 1 or i % 250 == 0 \
        else int.from_bytes(sizes[:2], "big") % 300
    return f"{tag}-{i:06d}:" + h.hexdigest(size // 2 + 1)[:size]


def mixed(tag, big_every, big_size=50000):
    """Message i: '<tag>-<i:06d>', and every big_every-th one a deterministic message of
    big_size bytes (many fragments)."""
    def make(i):
        head = f"{tag}-{i:06d}"
        if i % big_every:
            return head
        return (head + ":" + hashlib.shake_256(head.encode()).hexdigest(big_size // 2))[:big_size]
    return make


class Direction:
    """One direction of traffic: sender daemon -> relay -> receiver daemon; message i
    (1..total) is make(i), which starts with '<tag>-<i:06d>'."""

    def __init__(self, tag, sender, receiver, relay, total, make, chunk=1000):
        self.tag = tag
        self.sender, self.receiver, self.relay = sender, receiver, relay
        self.total, self.make, self.chunk = total, make, chunk
        self.enqueued = 0

    def delivered(self):
        return self.receiver.count("mqin", "token=?", (self.tag,))

    def enqueue_upto(self, n):
        """Enqueue (with the sqlite3 CLI, in chunks) until n messages are queued."""
        n = min(n, self.total)
        while self.enqueued < n:
            upto = min(n, self.enqueued + self.chunk)
            rows = [("127.0.0.1", self.relay.port, self.tag, self.make(i))
                    for i in range(self.enqueued + 1, upto + 1)]
            dbmod.enqueue_many(self.sender.db, rows, timeout_ms=20000)
            self.enqueued = upto

    def check_so_far(self):
        assert_handoff(self.sender, self.receiver, self.tag, self.enqueued)

    def assert_complete(self, timeout):
        """All `total` arrive exactly once, in order, intact, from the sender's port."""
        assert_series_delivered(self.sender, self.receiver, self.tag, self.total, timeout)
        assert_direction_clean(self.tag, self.final_figures())

    def final_figures(self):
        rows = self.receiver.query("SELECT data, typeof(data), sport FROM mqin WHERE token=? "
                                   "ORDER BY x", (self.tag,))
        numbers = dbmod.numbers_in([(d,) for d, _t, _p in rows], self.tag)
        distinct = set(numbers)
        out_of_order = sum(1 for i in range(1, len(numbers)) if numbers[i] <= numbers[i - 1])
        corrupted = [n for (d, t, _p), n in zip(rows, numbers)
                     if t != "text" or d != self.make(n)]
        ports = {p for _d, _t, p in rows}
        return {
            "sent": self.total, "received": len(numbers),
            "lost": len(set(range(1, self.total + 1)) - distinct),
            "duplicated": len(numbers) - len(distinct),
            "unexpected": len(distinct - set(range(1, self.total + 1))),
            "out_of_order": out_of_order, "corrupted": len(corrupted),
            "problems": series_problems(numbers, range(1, self.total + 1)),
            "sport_ok": ports <= {self.sender.port},
        }


class ChaosRun:
    def __init__(self, make_daemon, make_relay, seed=1, n_ab=3000, n_ba=1000, kills=6,
                 faults=None, backlog=2500, point_timeout=120.0, final_timeout=300.0,
                 log=print, keyed=False, key_dir=None):
        self.seed = seed
        self.keyed = keyed
        self.daemon_config = {}
        if keyed:
            self.daemon_config = {"key_file": write_key_file(key_dir, KEY_NAME, os.urandom(32)),
                                  "peers": {"*": KEY_NAME}}
        self.rng = random.Random(f"chaos:{seed}")
        self.make_daemon, self.make_relay = make_daemon, make_relay
        self.n_ab, self.n_ba, self.kills = n_ab, n_ba, kills
        self.faults = dict(FAULTS if faults is None else faults)
        self.backlog = backlog
        self.point_timeout, self.final_timeout = point_timeout, final_timeout
        self.log = log
        self.killed = {}
        self.killed_before_ready = 0
        self.checks = 0
        self.events = []

    # -- the plan ---------------------------------------------------------------------
    def plan(self):
        """(fraction of all messages delivered, victims, down time, early kill) per kill
        event; victims alternate in a seeded order, sometimes both die at once."""
        rng = self.rng
        victims = (["a", "b"] * (self.kills // 2 + 1))[:self.kills]
        rng.shuffle(victims)
        points = sorted(rng.uniform(0.02, 0.93) for _ in victims)
        plan = []
        for point, victim in zip(points, victims):
            both = rng.random() < 0.1
            down = rng.choice((0.0, 0.0, rng.uniform(0.05, 0.5), rng.uniform(0.5, 2.0)))
            early = rng.random() < 0.15  # killed again while starting, before READY=1
            plan.append((point, ("a", "b") if both else (victim,), down, early,
                         rng.uniform(0.0, 0.4)))
        return plan

    # -- running ----------------------------------------------------------------------
    def _top_up(self):
        delivered = [d.delivered() for d in self.dirs]
        for d, n in zip(self.dirs, delivered):
            d.enqueue_upto(n + self.backlog)
        return sum(delivered)

    def _crash(self, names, down, early, early_after):
        for name in names:
            self.nodes[name].kill()
            self.killed[name] = self.killed.get(name, 0) + 1
        for d in self.dirs:  # the victims' databases are still; check what they show
            d.check_so_far()
        self.checks += 1
        if down:
            time.sleep(down)  # the scenario: the node stays down this long
        for name in names:
            node = self.nodes[name]
            if early:
                node.start(wait=False)
                time.sleep(early_after)  # the scenario: a crash during start-up
                node.kill()
                self.killed[name] += 1
                self.killed_before_ready += 1
            node.start()

    def run(self):
        try:
            return self._run()
        except AssertionError as e:
            raise AssertionError(f"chaos seed {self.seed} (TINYMQ_CHAOS_SEED={self.seed} "
                                 f"repeats it); kill events so far (time, point, victims, "
                                 f"down, early): {self.events}; kills {self.killed}: {e}") from e

    def _run(self):
        t0 = time.monotonic()
        a = self.make_daemon("a", **self.daemon_config)
        b = self.make_daemon("b", **self.daemon_config)
        self.nodes = {"a": a, "b": b}
        a.start()
        b.start()
        to_b = self.make_relay(("127.0.0.1", b.port), seed=f"{self.seed}:to_b", **self.faults)
        to_a = self.make_relay(("127.0.0.1", a.port), seed=f"{self.seed}:to_a", **self.faults)
        self.relays = {"a->b": to_b, "b->a": to_a}
        ab = Direction("ab", a, b, to_b, self.n_ab, functools.partial(payload, self.seed, "ab"))
        ba = Direction("ba", b, a, to_a, self.n_ba, functools.partial(payload, self.seed, "ba"),
                       chunk=500)
        self.dirs = [ab, ba]
        total = self.n_ab + self.n_ba
        self._top_up()
        describe = lambda: (f"{dbmod.describe_queues(a.db, b.db)}; enqueued ab={ab.enqueued} "  # noqa: E731
                            f"ba={ba.enqueued}; kills {self.killed}")
        plan = self.plan()
        in_flight = 0
        for n, (point, names, down, early, early_after) in enumerate(plan, 1):
            wait_until(lambda: self._top_up() >= point * total, self.point_timeout,
                       f"kill {n}/{len(plan)}: {point:.0%} of {total} delivered",
                       interval=0.01, describe=describe)
            in_flight += a.count("mqout") + b.count("mqout") > 0
            self.events.append((round(time.monotonic() - t0, 2), point, names, down, early))
            self._crash(names, down, early, early_after)
        wait_until(lambda: self._top_up() >= total and all(
            d.sender.count("mqout", "token=?", (d.tag,)) == 0 for d in self.dirs),
            self.final_timeout, "every message delivered", interval=0.05, describe=describe)
        holds_for(lambda: ab.delivered() == self.n_ab and ba.delivered() == self.n_ba, 1.0,
                  "no late duplicates", describe=describe)
        elapsed = time.monotonic() - t0
        figures = {
            "seed": self.seed,
            "keyed": self.keyed,
            "keys": {"a": keys_used(a), "b": keys_used(b)},
            "messages": {"a->b": self.n_ab, "b->a": self.n_ba},
            "kills": dict(self.killed, total=sum(self.killed.values()),
                          before_ready=self.killed_before_ready, with_traffic=in_flight),
            "directions": {"a->b": ab.final_figures(), "b->a": ba.final_figures()},
            "relays": {name: r.snapshot() for name, r in self.relays.items()},
            "checks_at_kills": self.checks,
            "elapsed_s": round(elapsed, 1),
        }
        a.stop()
        b.stop()
        return figures


KEY_NAME = "chaos"


def write_key_file(directory, name, key):
    """A key file as the README says to make one (mode 0640) with one key; its path."""
    if directory is None:
        raise ValueError("keyed=True needs key_dir= (e.g. pytest's tmp_path)")
    path = os.path.join(str(directory), "chaos-keys.yaml")
    with open(path, "w") as f:
        f.write(f"{name}: {base64.b64encode(key).decode()}\n")
    os.chmod(path, 0o640)
    return path


def keys_used(d):
    """The distinct mqin.key values of a Daemon's database (None: unsealed)."""
    return sorted({k for (k,) in dbmod.query(d.db, "SELECT DISTINCT key FROM mqin")},
                  key=str)


def seed_from_env(default):
    return int(os.environ.get("TINYMQ_CHAOS_SEED", default))


def format_figures(f):
    lines = [f"chaos seed {f['seed']}{' (keyed)' if f.get('keyed') else ''}: "
             f"{f['elapsed_s']} s",
             f"  messages: a->b {f['messages']['a->b']}, b->a {f['messages']['b->a']}",
             f"  kills (SIGKILL): a {f['kills'].get('a', 0)}, b {f['kills'].get('b', 0)}, "
             f"total {f['kills']['total']} ({f['kills']['before_ready']} during start-up, "
             f"{f['kills']['with_traffic']} kill events with rows still queued); "
             f"invariant checks at kills: {f['checks_at_kills']}"]
    for name, d in f["directions"].items():
        lines.append(f"  {name}: received {d['received']} of {d['sent']}: lost {d['lost']}, "
                     f"duplicated {d['duplicated']}, out of order {d['out_of_order']}, "
                     f"corrupted {d['corrupted']}, unexpected {d['unexpected']}")
    keys = ("received", "sent", "dropped", "duplicated", "reordered", "delayed", "send_errors")
    for name, r in f["relays"].items():
        for direction in ("forward", "reverse"):
            lines.append(f"  relay {name} {direction:7}: " +
                         ", ".join(f"{k} {r[direction][k]}" for k in keys))
    return "\n".join(lines)


def assert_direction_clean(name, d):
    """Direction.final_figures() `d`: nothing lost, duplicated, reordered or changed."""
    assert (d["lost"], d["duplicated"], d["out_of_order"], d["corrupted"],
            d["unexpected"]) == (0, 0, 0, 0, 0), f"{name}: {d['problems']} ({d})"
    assert d["sport_ok"], f"{name}: mqin.sport is not the sender's listening port"


def assert_clean(f):
    for name, d in f["directions"].items():
        assert_direction_clean(name, d)
    if f.get("keyed"):
        assert f["keys"] == {"a": [KEY_NAME], "b": [KEY_NAME]}, \
            f"messages not authenticated by the key: mqin.key values {f['keys']}"
