"""systemctl reload (SIGHUP) and the control socket, on real daemons: a reload changes
what it may without losing or re-sending a message; a bad file keeps the running
configuration; the control socket answers however its clients behave."""

import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.daemon import PYTHON, REPO, UNSHARE, OwnFilesDaemon, daemon_env
from tests.support.observe import LogMark
from tests.support.wait import holds_for, wait_until


def reload(daemon):
    """SIGHUP as systemctl reload sends it; waits for RELOADING=1 then READY=1."""
    mark = daemon.notify.mark()
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = daemon.notify.wait_for("RELOADING", "1", since=mark, timeout=10)
    assert reloading is not None, "no RELOADING=1 after SIGHUP"
    ready = daemon.notify.wait_for("READY", "1", since=mark, timeout=10)
    assert ready is not None and ready[0] >= reloading[0], "no READY=1 after RELOADING=1"


def ask(daemon, request, timeout=5):
    """One request on the daemon's control socket; the decoded answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(daemon.control_socket))
        sock.sendall(request if isinstance(request, bytes) else
                     (json.dumps(request) + "\n").encode())
        return json.loads(sock.makefile("rb").readline())


@pytest.mark.timeout(120)
def test_a_transfer_runs_across_five_reloads_exactly_once_in_order(make_daemon, make_relay):
    a, b = make_daemon("a").start(), make_daemon("b").start()
    relay = make_relay(("127.0.0.1", b.port), loss=10, dup=5, reorder=5, jitter_ms=3, seed=3)
    dbmod.enqueue_series(a.db, "127.0.0.1", relay.port, "reload", 3000, pad=60)
    for level in ("debug", "warning", "info", "debug", "info"):
        wait_until(lambda: b.count("mqin") > 0, 20, "the transfer is under way")
        for d in (a, b):
            d.write_config(log_level=level, retry_max=0.5 if level == "debug" else 1.0)
            reload(d)
        time.sleep(0.2)  # pacing the reloads over the transfer
    assert_series_delivered(a, b, "reload", 3000, timeout=60)
    assert a.count("mqout") == 0


@pytest.mark.timeout(60)
def test_a_changed_log_level_takes_effect(pair):
    a, b = pair
    a.write_config(log_level="warning")
    reload(a)
    mark = LogMark(a)
    x = a.enqueue(9, "t", "to a port nobody listens on")  # logged at info when cancelled
    dbmod.sqlite_cli(a.db, f"DELETE FROM mqout WHERE x = {x};")
    a.enqueue(b, "t", "delivered")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered after the reload")
    holds_for(lambda: "cancelled" not in mark.text(), 1.0, "no info line at level warning")
    a.write_config(log_level="info")
    reload(a)
    wait_until(lambda: "configuration reloaded" in mark.text(), 5,
               "back at info: the reload itself is logged")


@pytest.mark.timeout(60)
def test_a_bad_reload_keeps_the_running_configuration_and_names_the_key(pair):
    a, b = pair
    mark = LogMark(a)
    a.config_path.write_text(a.config_path.read_text() + "retry_max: -1\n")
    reload(a)
    wait_until(lambda: "retry_max" in mark.text(), 5, "one line naming the key")
    errors = [line for line in mark.lines() if "reload failed" in line]
    assert len(errors) == 1 and "Traceback" not in mark.text(), mark.text()
    a.enqueue(b, "t", "still delivering")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered with the old configuration")
    a.assert_alive()


@pytest.mark.timeout(60)
def test_a_reload_naming_a_directory_as_key_file_keeps_the_running_configuration(pair):
    a, b = pair
    mark = LogMark(a)
    a.write_config(key_file=str(a.config_path.parent), peers={"*": "k"})
    reload(a)
    wait_until(lambda: "not a regular file" in mark.text(), 5, "one line naming the file")
    a.enqueue(b, "t", "still delivering, unsealed")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered with the old configuration")
    a.assert_alive()


@pytest.mark.timeout(60)
def test_a_change_that_needs_a_restart_is_said_and_not_applied(pair):
    a, b = pair
    mark = LogMark(a)
    a.write_config(max_message=1000)
    reload(a)
    wait_until(lambda: "next restart" in mark.text(), 5, "a reload says max_message waits")
    a.enqueue(b, "t", "x" * 5000)  # the running limit (16 MiB) still applies
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered under the running limit")


@pytest.mark.timeout(60)
def test_the_control_socket_answers_status_and_survives_bad_clients(pair):
    a, b = pair
    a.enqueue(b, "t", "hello")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered")
    status = ask(a, {"command": "status"})
    assert status["ok"] and status["daemon"]["pid"] == a.pid
    assert status["daemon"]["port"] == a.port and len(status["daemon"]["node"]) == 16
    assert ask(b, {"command": "status"})["senders"][0]["received"] == 1
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(a.control_socket))  # connects and never says anything
    try:
        t0 = time.monotonic()
        assert ask(a, {"command": "status"})["ok"], "answered beside a silent client"
        assert time.monotonic() - t0 < 2
        for bad in (b"not json\n", b"[1, 2]\n", b'{"command": "reboot"}\n', b"x" * 100000,
                    b'{"command": "flush", "host": 7}\n', b"\xff\xfe\n",
                    b"[" * 4000 + b"\n"):  # nesting deeper than the JSON parser goes
            try:
                answer = ask(a, bad)
            except (ConnectionError, ValueError):
                continue  # an oversized request may be cut off: that is fine too
            assert answer["ok"] is False and answer["error"], answer
    finally:
        silent.close()
    assert ask(a, {"command": "flush"}) == {"ok": True, "destinations": 1}
    a.assert_alive()
    assert "Traceback" not in a.stderr_text()


@pytest.mark.timeout(60)
def test_status_shows_a_dead_destination_unreachable_within_3_s(start_daemon, make_sink):
    a = start_daemon("a")
    dead = make_sink()  # a port that takes datagrams and never answers
    a.enqueue(dead.port, "t", "waits")
    t0 = time.monotonic()
    wait_until(lambda: any(d["state"] == "unreachable"
                           for d in ask(a, {"command": "status"})["destinations"]), 5,
               "the dead destination shows as unreachable")
    assert time.monotonic() - t0 <= 3.5


def tinymq(daemon, *args):
    return subprocess.run([PYTHON, "-m", "tinymqd.ctl", "-c", str(daemon.config_path), *args],
                          cwd=REPO, env=daemon_env(), capture_output=True, text=True,
                          timeout=30)


@pytest.mark.timeout(60)
def test_tinymq_reload_answers_once_the_new_configuration_runs(pair):
    """What systemctl reload runs (ExecReload=): it returns after RELOADING=1 and READY=1,
    0 for a good file, 1 and the daemon's one line for a bad one (old one kept)."""
    a, b = pair
    a.write_config(log_level="warning")
    mark, log = a.notify.mark(), LogMark(a)
    done = tinymq(a, "reload")
    assert done.returncode == 0 and "reloaded" in done.stdout, done
    reloading = a.notify.wait_for("RELOADING", "1", since=mark, timeout=5)
    ready = a.notify.wait_for("READY", "1", since=mark, timeout=5)
    assert reloading is not None and ready is not None and ready[0] >= reloading[0]
    x = a.enqueue(9, "t", "to a port nobody listens on")  # logged at info when cancelled
    dbmod.sqlite_cli(a.db, f"DELETE FROM mqout WHERE x = {x};")
    a.enqueue(b, "t", "delivered")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered after the reload")
    holds_for(lambda: "cancelled" not in log.text(), 1.0, "no info line at level warning")

    a.config_path.write_text(a.config_path.read_text() + "retry_max: -1\n")
    refused = tinymq(a, "reload")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "reload failed" in refused.stderr and "retry_max" in refused.stderr
    a.enqueue(b, "t", "still delivering")
    wait_until(lambda: b.count("mqin") == 2, 10, "delivered with the old configuration")
    a.assert_alive()


def test_tinymq_reload_without_a_daemon_exits_69(pair):
    a, _ = pair
    a.stop()
    refused = tinymq(a, "reload")
    assert refused.returncode == 69 and "not running" in refused.stderr, refused


@pytest.mark.timeout(60)
def test_reloads_asked_by_many_clients_at_once_all_answer_and_no_worker_stalls(pair):
    """20 `tinymq reload`s at the same moment (an admin's loop, several scripts): each is
    answered, promptly, and the control thread keeps showing signs of life."""
    a, b = pair
    mark = LogMark(a)
    answers = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda: answers.append(ask(a, {"command": "reload"},
                                                                   timeout=20)))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    assert len(answers) == 20 and all(answer["ok"] for answer in answers), answers
    assert took < 8, f"20 reloads took {took:.1f} s"
    assert "not responding" not in mark.text(), mark.text()
    a.enqueue(b, "t", "after the reloads")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered after the reloads")


@pytest.mark.timeout(60)
def test_a_reload_that_meets_an_empty_file_keeps_the_keys(make_daemon, tmp_path):
    """A config file caught empty while it is being rewritten would mean: no keys. The
    reload is refused, sealed traffic goes on, rows still name their key."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"k: {base64.b64encode(os.urandom(32)).decode()}\n")
    keys.chmod(0o640)
    a, b = (make_daemon(name, key_file=str(keys), peers={"*": "k"}).start()
            for name in ("a", "b"))
    b.config_path.write_text("")
    refused = ask(b, {"command": "reload"})  # (tinymq would look for the default socket)
    assert not refused["ok"] and "is empty" in refused["error"], refused
    a.enqueue(b, "t", "sealed after the refused reload")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered")
    assert b.query("SELECT key FROM mqin") == [("k",)]


@pytest.mark.skipif(os.geteuid() != 0 or not UNSHARE, reason="needs root and unshare(1)")
@pytest.mark.timeout(60)
def test_a_reload_naming_peers_a_silent_name_server_cannot_resolve_answers_at_once(
        make_daemon):
    """peers names host names; the name server never answers. Looking them up must not
    hold up the reload's answer, the watchdog or a stop (2 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.153", 53))  # takes queries, answers none
        keys = make_daemon("a").dir / "keys.yaml"
        keys.parent.mkdir(parents=True, exist_ok=True)
        keys.write_text(f"k: {base64.b64encode(os.urandom(32)).decode()}\n")
        keys.chmod(0o640)
        a = make_daemon("b", daemon_class=OwnFilesDaemon)
        a.files = {"/etc/resolv.conf": "nameserver 127.0.0.153\noptions timeout:5\n"}
        a.start()
        a.write_config(key_file=str(keys), peers={"slow-1.example": "k", "slow-2.example": "k"})
        t0 = time.monotonic()
        done = tinymq(a, "reload")
        assert done.returncode == 0, done
        assert time.monotonic() - t0 < 3, "the reload waited for the name server"
        a.stop()  # within 2 s (asserted by stop) while the lookups still wait
