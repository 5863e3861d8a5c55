"""The chaos relay itself (no daemon): it must do what it says, and count it."""

import json
import socket
import subprocess
import time

import pytest

from tests.support.daemon import PYTHON, REPO, daemon_env
from tests.support.ports import udp_socket
from tests.support.relay import Relay, RelayProcess
from tests.support.wait import wait_until


def payloads(n, size=32):
    return [f"{i:06d}".encode().ljust(size, b".") for i in range(n)]


def send_all(sock, addr, datagrams, pace_every=50):
    for i, d in enumerate(datagrams):
        sock.sendto(d, addr)
        if pace_every and i % pace_every == pace_every - 1:
            time.sleep(0.002)  # stay far below the socket buffers


def recv_all(sock, n, timeout):
    out = []
    deadline = time.monotonic() + timeout
    sock.settimeout(0.05)
    while len(out) < n and time.monotonic() < deadline:
        try:
            out.append(sock.recv(65535))
        except socket.timeout:
            pass
    return out


def test_forwards_and_returns_replies_in_order(make_relay, make_sink):
    echo = make_sink(echo=True)
    relay = make_relay((echo.host, echo.port))
    client = udp_socket()
    data = payloads(300)
    send_all(client, relay.address, data)
    back = recv_all(client, 300, 5)
    assert back == data
    # The relay counts a datagram once sendto() has returned: the client may have it first.
    st = wait_until(lambda: (s := relay.snapshot())["reverse"]["sent"] == 300 and s, 2,
                    "the relay counted the last reply", describe=relay.snapshot)
    for d in ("forward", "reverse"):
        assert st[d]["received"] == st[d]["sent"] == 300, st
        assert st[d]["dropped"] == st[d]["duplicated"] == st[d]["reordered"] == 0
    assert st["forward"]["max_size"] == 32


def test_each_client_gets_its_own_upstream_and_only_its_replies(make_relay, make_sink):
    echo = make_sink(echo=True)
    relay = make_relay((echo.host, echo.port))
    c1, c2 = udp_socket(), udp_socket()
    c1.sendto(b"one", relay.address)
    c2.sendto(b"two", relay.address)
    assert recv_all(c1, 1, 2) == [b"one"]
    assert recv_all(c2, 1, 2) == [b"two"]
    assert recv_all(c1, 1, 0.2) == []
    assert len(echo.sources()) == 2
    assert relay.address not in echo.sources()


def test_loss_is_about_the_rate_and_counted(make_relay, make_sink):
    sink = make_sink()
    relay = make_relay((sink.host, sink.port), forward={"loss": 30}, seed=3)
    send_all(udp_socket(), relay.address, payloads(2000))
    wait_until(lambda: relay.snapshot()["forward"]["received"] == 2000, 5, "relay got all")
    st = relay.snapshot()["forward"]
    wait_until(lambda: sink.count() == st["sent"], 5, "sink got what relay sent")
    assert st["sent"] + st["dropped"] == 2000
    assert 500 <= st["dropped"] <= 700, st


def test_duplication_sends_twice(make_relay, make_sink):
    sink = make_sink()
    relay = make_relay((sink.host, sink.port), dup=100)
    data = payloads(100)
    send_all(udp_socket(), relay.address, data)
    wait_until(lambda: sink.count() == 200, 5, "200 datagrams", describe=relay.snapshot)
    got = sink.datagrams()
    assert sorted(got) == sorted(data + data)
    assert relay.snapshot()["forward"]["duplicated"] == 100


def test_same_seed_same_faults_other_seed_other_faults(make_relay, make_sink):
    def run(seed):
        sink = make_sink()
        relay = make_relay((sink.host, sink.port), seed=seed, loss=20, dup=10, corrupt=5)
        client = udp_socket()
        for d in payloads(400):
            client.sendto(d, relay.address)
        wait_until(lambda: relay.snapshot()["forward"]["received"] == 400, 5, "relay got all")
        sent = relay.snapshot()["forward"]["sent"]
        wait_until(lambda: sink.count() == sent, 5, "sink got all")
        return sink.datagrams()

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other


def test_reordering_changes_order_but_loses_nothing(make_relay, make_sink):
    sink = make_sink()
    relay = make_relay((sink.host, sink.port), reorder=20, reorder_ms=30, seed=5)
    data = payloads(500)
    send_all(udp_socket(), relay.address, data, pace_every=10)
    wait_until(lambda: sink.count() == 500, 5, "all 500 arrive", describe=relay.snapshot)
    got = sink.datagrams()
    assert sorted(got) == data
    assert got != data
    assert 60 <= relay.snapshot()["forward"]["reordered"] <= 140


def test_delay_and_jitter(make_relay, make_sink):
    sink = make_sink()
    relay = make_relay((sink.host, sink.port), delay_ms=80, jitter_ms=40)
    client = udp_socket()
    sent_at = {}
    for d in payloads(20):
        sent_at[d] = time.monotonic()
        client.sendto(d, relay.address)
        time.sleep(0.005)
    wait_until(lambda: sink.count() == 20, 5, "20 arrive")
    lat = [t - sent_at[d] for t, d, _a in sink.received]
    assert min(lat) >= 0.079, lat
    assert max(lat) <= 0.5, lat
    assert max(lat) - min(lat) > 0.005, "jitter should spread the latency"


def test_directions_are_separate(make_relay, make_sink):
    echo = make_sink(echo=True)
    relay = make_relay((echo.host, echo.port), forward={"loss": 0}, reverse={"loss": 100})
    client = udp_socket()
    send_all(client, relay.address, payloads(50))
    wait_until(lambda: echo.count() == 50, 5, "target gets all 50")
    assert recv_all(client, 1, 0.3) == []
    st = relay.snapshot()
    assert st["reverse"]["dropped"] == 50 and st["forward"]["dropped"] == 0


def test_corruption_flips_one_bit_truncation_cuts(make_relay, make_sink):
    sink = make_sink()
    relay = make_relay((sink.host, sink.port), forward={"corrupt": 100})
    data = payloads(50, size=100)
    send_all(udp_socket(), relay.address, data)
    wait_until(lambda: sink.count() == 50, 5, "50 arrive")
    for orig, got in zip(data, sink.datagrams()):
        assert len(got) == len(orig)
        diff = int.from_bytes(orig, "big") ^ int.from_bytes(got, "big")
        assert bin(diff).count("1") == 1

    sink2 = make_sink()
    relay2 = make_relay((sink2.host, sink2.port), truncate=100)
    send_all(udp_socket(), relay2.address, data)
    wait_until(lambda: sink2.count() == 50, 5, "50 arrive")
    for orig, got in zip(data, sink2.datagrams()):
        assert 1 <= len(got) < len(orig) and orig.startswith(got)


def test_faults_change_at_run_time(make_relay, make_sink):
    sink = make_sink()
    relay = make_relay((sink.host, sink.port))
    client = udp_socket()
    relay.set_faults("forward", loss=100)
    client.sendto(b"lost", relay.address)
    wait_until(lambda: relay.snapshot()["forward"]["dropped"] == 1, 2, "dropped")
    relay.set_faults("forward", loss=0)
    client.sendto(b"kept", relay.address)
    wait_until(lambda: sink.count() == 1, 2, "arrives")
    assert sink.datagrams() == [b"kept"]


def test_big_datagrams_pass(make_relay, make_sink):
    sink = make_sink()
    relay = make_relay((sink.host, sink.port))
    udp_socket().sendto(b"x" * 60000, relay.address)
    wait_until(lambda: sink.count() == 1, 2, "arrives")
    assert len(sink.datagrams()[0]) == 60000
    assert relay.snapshot()["forward"]["max_size"] == 60000


def test_refuses_non_loopback_target():
    with pytest.raises(ValueError):
        Relay(("192.0.2.1", 9))
    with pytest.raises(ValueError):
        Relay(("127.0.0.1", 9), loss=101)


def test_command_line(make_sink):
    sink = make_sink()
    relay = RelayProcess(sink.port, seed=1, listen="0", loss=10, dup=5, reorder=5, delay_ms=1,
                         jitter_ms=5, rev_loss=0)
    try:
        assert relay.line.startswith("relay listening on 127.0.0.1:"), relay.line
        assert "'loss': 10.0" in relay.line
        send_all(udp_socket(), ("127.0.0.1", relay.port), payloads(500))
        wait_until(lambda: sink.count() >= 400, 5, "most arrive")
        time.sleep(0.1)  # let the jittered tail arrive before we stop it
    finally:
        stats = relay.stop()
    assert relay.proc.returncode == 0, relay.stderr
    fwd = stats["forward"]
    assert fwd["received"] == 500
    assert fwd["sent"] + fwd["discarded_at_stop"] == 500 - fwd["dropped"] + fwd["duplicated"]
    assert 20 <= fwd["dropped"] <= 90 and fwd["duplicated"] > 0 and fwd["reordered"] > 0
    wait_until(lambda: sink.count() == fwd["sent"], 2, "the sink got all the relay sent")


def test_command_line_stops_by_itself():
    t0 = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "tests.support.relay", "--listen", "0", "--target",
                           "127.0.0.1:9", "--duration", "0.5"], cwd=REPO, capture_output=True,
                          text=True, timeout=10, env=daemon_env())
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 5
    assert json.loads(proc.stdout.strip().splitlines()[-1])["forward"]["received"] == 0
    bad = subprocess.run([PYTHON, "-m", "tests.support.relay", "--listen", "0", "--target",
                          "192.0.2.1:9"], cwd=REPO, capture_output=True, text=True, timeout=10,
                         env=daemon_env())
    assert bad.returncode == 2 and "non-loopback" in bad.stderr
