"""Failures under systemd: a bad config, kill -9, a hung daemon."""

import json
import time

import systest as S
from systest import wait_for

CONF = "/etc/tinymq.yaml"


def _wait_active(c, timeout=30):
    wait_for(f"tinymq on {c.hostname} to be active",
             lambda: c.show("ActiveState") == "active" and c.show("MainPID") != "0", timeout)


def test_config_error_fails_once_with_one_clear_line(pair):
    c = pair.a
    c.run(f"cp {CONF} /root/tinymq.yaml.orig && echo 'bogus_key: 1' >> {CONF}")
    try:
        before = c.out("date '+%Y-%m-%d %H:%M:%S'")
        p = c.run("systemctl restart tinymq", check=False)
        assert p.returncode != 0, "systemctl restart succeeded with a bad config"
        assert c.show("ActiveState") == "failed"
        assert c.show("ExecMainStatus") == "78"
        pid = c.show("ExecMainPID")
        # No restart loop: the unit stays failed, NRestarts stays 0, well past
        # RestartSec=1s (this waits 4 s for something that must not happen).
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert c.show("ActiveState") == "failed" and c.show("NRestarts") == "0"
            time.sleep(0.5)
        entries = [json.loads(line) for line in c.out(
            f"journalctl -u tinymq --since '{before}' -o json --no-pager _PID={pid}").splitlines()]
        messages = {e["MESSAGE"] for e in entries if isinstance(e.get("MESSAGE"), str)}
        assert len(messages) == 1, f"expected one line from the daemon, got {messages}"
        line = messages.pop()
        assert CONF in line and "bogus_key" in line, line
        assert "Traceback" not in c.out(f"journalctl -u tinymq --since '{before}' --no-pager")
        assert "Scheduled restart job" not in c.out(
            f"journalctl -u tinymq --since '{before}' --no-pager")
    finally:
        c.run(f"mv /root/tinymq.yaml.orig {CONF} && systemctl reset-failed tinymq; "
              "systemctl start tinymq")
    assert c.show("ActiveState") == "active"


def test_kill_9_is_restarted_and_loses_nothing(pair):
    a, b = pair.a, pair.b
    n = 400
    inserter = S.paced_insert(a, "hostb", "kill9", n)
    try:
        for victim, after in ((a, 100), (b, 250)):
            wait_for(f"{after} messages at hostb", lambda: S.count(b, "mqin", "data LIKE 'kill9-%'") >= after, 60)
            restarts, pid = int(victim.show("NRestarts")), victim.show("MainPID")
            victim.run(f"kill -9 {pid}")
            wait_for(f"systemd to restart tinymq on {victim.hostname}",
                     lambda: victim.show("MainPID") not in ("0", pid) and
                     victim.show("ActiveState") == "active", 30)
            assert int(victim.show("NRestarts")) == restarts + 1
    finally:
        inserter.wait(60)
    assert inserter.returncode == 0, inserter.stderr.read()
    S.assert_exactly_once(b, a, "kill9", n)


def test_watchdog_restarts_a_hung_daemon(pair):
    c = pair.a
    dropin = "/run/systemd/system/tinymq.service.d/watchdog.conf"
    c.run(f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Service]\\nWatchdogSec=2s\\n' > {dropin}"
          " && systemctl daemon-reload && systemctl restart tinymq")
    try:
        assert c.show("WatchdogUSec") == "2s"
        pid, restarts = c.show("MainPID"), int(c.show("NRestarts"))
        # A daemon that answers keeps the watchdog happy: no restart in 3 periods.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert c.show("MainPID") == pid, "restarted although the daemon was answering"
            time.sleep(0.5)
        c.run(f"kill -STOP {pid}")
        wait_for("the watchdog to restart the stopped daemon",
                 lambda: c.show("MainPID") not in ("0", pid) and c.show("ActiveState") == "active", 40)
        assert int(c.show("NRestarts")) == restarts + 1
        assert "Watchdog timeout" in c.out("journalctl -u tinymq --no-pager -n 50")
    finally:
        c.run(f"rm -f {dropin} && systemctl daemon-reload && systemctl restart tinymq")
    S.readme_insert(c, "hostb", "after-watchdog")
    wait_for("after-watchdog at hostb", lambda: S.count(pair.b, "mqin", "data='after-watchdog'") == 1, 20)
