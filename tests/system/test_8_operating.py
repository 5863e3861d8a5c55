"""Operating the installed package (issue 10), on a Debian 13 and a Debian 12 host:
the DEP-8 smoke test passes as autopkgtest runs it; the `tinymq` command run by a
member of group tinymq (not root) sends, receives, shows the status, lists, holds,
releases, deletes and flushes; a user outside the group gets one clear error line;
the control socket is 0660 group tinymq in the unit's RuntimeDirectory;
`systemctl reload tinymq` applies a changed log level without a restart and a broken
file keeps the running configuration; log lines about a peer carry TINYMQ_PEER."""

import json
import re
import shlex

import pytest

import systest as S
from systest import wait_for

CONF = "/etc/tinymq.yaml"
SOCKET = "/run/tinymq/control"
MEMBER = "alice"  # in group tinymq (conftest.install_and_prepare)
OUTSIDER = "eve"  # not in group tinymq
SMOKE_DIR = S.REPO / "debian/tests"
UNROUTABLE = "10.9.9.9"  # no route from the containers: every send fails at once


def tinymq(c, args, user=MEMBER, check=True, timeout=60):
    """Run `tinymq ARGS` in the container as user (a member of group tinymq by
    default, root with user=None)."""
    return c.run(f"tinymq {args}", user=user, check=check, timeout=timeout)


def status_json(c, user=MEMBER):
    return json.loads(tinymq(c, "status --json", user=user).stdout)


def destination(status, host, port=9000):
    found = [d for d in status["destinations"] if (d["host"], d["port"]) == (host, port)]
    assert len(found) == 1, status["destinations"]
    return found[0]


def queued(c, user=MEMBER):
    """{x: row} of `tinymq queue --json`."""
    rows = [json.loads(line) for line in tinymq(c, "queue --json", user=user).stdout.splitlines()]
    return {row["x"]: row for row in rows}


def received(c, where):
    return S.count(c, "mqin", where)


def one_error_line(p, *needles):
    """A command refused: exit 1, nothing on stdout, one line on stderr."""
    err = p.stderr.strip()
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert not p.stdout.strip(), p.stdout
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("tinymq: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------- the DEP-8 smoke test (autopkgtest)

def _dep8_tests():
    """(name, restrictions) of each test in debian/tests/control."""
    tests = []
    for stanza in re.split(r"\n\s*\n", (SMOKE_DIR / "control").read_text().strip()):
        fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
        restrictions = set(re.split(r"[\s,]+", fields.get("Restrictions", "").strip())) - {""}
        tests += [(name, restrictions) for name in fields["Tests"].split()]
    return tests


@pytest.mark.parametrize("release", ["trixie", "bookworm"])
def test_dep8_smoke_test_passes_as_autopkgtest_runs_it(releases, release):
    """autopkgtest installs the package (here: apt install ./tinymq.deb, as the fixture
    did), then runs each test of debian/tests/control from the top of the source tree
    with AUTOPKGTEST_TMP set, as root for needs-root; without allow-stderr, any output
    on stderr fails the test."""
    c = getattr(releases, release)
    tests = _dep8_tests()
    assert [name for name, _ in tests] == ["smoke"], tests
    src = "/tmp/tinymq-src"
    for f in SMOKE_DIR.iterdir():
        c.run(f"mkdir -p {src}/debian/tests && cat > {src}/debian/tests/{f.name} "
              f"&& chmod {f.stat().st_mode & 0o777:o} {src}/debian/tests/{f.name}",
              input=f.read_text())
    for name, restrictions in tests:
        assert "needs-root" in restrictions  # so it runs as root below
        p = c.run(f"cd {src} && export AUTOPKGTEST_TMP=$(mktemp -d) "
                  f"AUTOPKGTEST_ARTIFACTS=$(mktemp -d) && debian/tests/{name} </dev/null",
                  check=False, timeout=120)
        assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        if "allow-stderr" not in restrictions:
            assert not p.stderr, p.stderr


# ------------------------------------------- the tinymq command as a member of the group

def test_control_socket_is_0660_group_tinymq_in_the_units_runtime_directory(releases):
    for c in (releases.trixie, releases.bookworm):
        assert c.out(f"grep -x 'control_socket: {SOCKET}' {CONF}")
        mode = int(c.show("RuntimeDirectoryMode"), 8)
        assert c.show("RuntimeDirectory") == "tinymq"
        assert c.out("stat -c '%U:%G %a %F' /run/tinymq") == f"tinymq:tinymq {mode:o} directory"
        assert mode & 0o050 == 0o050 and mode & 0o007 == 0, f"{mode:o}"  # group in, others out
        assert c.out(f"stat -c '%G %a %F' {SOCKET}") == "tinymq 660 socket"


@pytest.mark.parametrize("direction", ["13->12", "12->13"])
def test_member_sends_receives_and_sees_the_status(releases, direction):
    new, old = releases.trixie, releases.bookworm
    src, dst = (new, old) if direction == "13->12" else (old, new)
    data = f"tinymq-send-{src.hostname}-to-{dst.hostname}"
    token = f"tok-{src.hostname}"
    p = tinymq(src, f"send --token {token} {dst.hostname} {data}")
    x = p.stdout.strip()
    assert x.isdigit() and not p.stderr, (p.stdout, p.stderr)
    wait_for(f"{data!r} at {dst.hostname}", lambda: received(dst, f"data='{data}'") == 1, 20)
    wait_for(f"x {x} to leave {src.hostname}'s mqout", lambda: int(x) not in queued(src), 10)

    # What arrived, as JSON (kept), then printed and deleted by a plain recv.
    kept = [json.loads(line) for line in tinymq(dst, "recv --keep --json").stdout.splitlines()]
    ours = [m for m in kept if m["data"] == data]
    assert len(ours) == 1, kept
    m = ours[0]
    assert m["shost"] in (src.address, f"::ffff:{src.address}"), m
    assert (m["sport"], m["token"], m["type"], m["base64"]) == (9000, token, "text", False), m
    assert isinstance(m["seq"], int) and re.fullmatch(r"[0-9a-f]{16}", m["sender"]), m
    out = tinymq(dst, f"recv --from {src.hostname}").stdout
    assert data in out.splitlines(), out
    assert received(dst, f"data='{data}'") == 0, "recv did not delete what it printed"
    assert data not in tinymq(dst, "recv --keep --json").stdout

    # The sender's status: the daemon runs (its pid is the unit's), the destination.
    pid = int(src.show("MainPID"))
    text = tinymq(src, "status").stdout
    assert text.startswith(f"tinymqd: running, pid {pid}, "), text
    assert re.search(rf"^{re.escape(dst.hostname)}:9000 +\w+ +0 ", text, re.M), text
    st = status_json(src)
    node = st["daemon"]["node"]
    assert (st["daemon"]["running"], st["daemon"]["pid"]) == (True, pid), st["daemon"]
    assert st["daemon"]["database"] == S.DB and st["daemon"]["port"] == 9000, st["daemon"]
    dest = destination(st, dst.hostname)
    assert dest["pending"] == 0 and dest["state"] in ("idle", "sending"), dest
    # The receiver's status knows the sender's node.
    st = status_json(dst)
    assert st["daemon"]["running"] is True
    senders = [s for s in st["senders"] if s["node"] == node]
    assert len(senders) == 1 and senders[0]["received"] >= 1, st["senders"]
    assert senders[0]["host"] in (src.address, f"::ffff:{src.address}"), senders


def test_member_holds_lists_deletes_releases_and_flushes(releases):
    src, dst = releases.trixie, releases.bookworm
    host = dst.hostname
    out = tinymq(src, f"hold {host}").stdout
    assert out.startswith(f"held {host} ") and "tinymqd was told" in out, out
    try:
        x_kept = int(tinymq(src, f"send {host} held-kept").stdout)
        x_gone = int(tinymq(src, f"send {host} held-cancelled").stdout)
        dest = destination(status_json(src), host)
        assert (dest["state"], dest["held"], dest["pending"]) == ("held", True, 2), dest
        assert re.search(rf"^{re.escape(host)}:9000 +held ", tinymq(src, "status").stdout, re.M)
        rows = queued(src)
        assert {x_kept, x_gone} <= set(rows), rows
        assert (rows[x_kept]["host"], rows[x_kept]["size"]) == (host, len("held-kept"))
        listing = tinymq(src, f"queue --to {host}").stdout
        assert re.search(rf"^ +{x_kept} +\S+ {re.escape(host)}:9000 ", listing, re.M), listing
        assert tinymq(src, f"delete {x_gone}").stdout.strip() == "deleted 1"
        # Held: nothing moves, however long.
        S.holds_for(f"nothing sent to the held {host}",
                    lambda: received(dst, "data LIKE 'held-%'") == 0 and x_kept in queued(src), 3)
    finally:
        out = tinymq(src, f"release {host}").stdout
    assert out.startswith(f"released {host} ") and "tinymqd was told" in out, out
    wait_for("held-kept delivered after release",
             lambda: received(dst, "data='held-kept'") == 1 and x_kept not in queued(src), 20)
    assert received(dst, "data='held-cancelled'") == 0, "a deleted row was delivered"
    assert not destination(status_json(src), host)["held"]
    # The daemon logged the release as an event of that peer.
    wait_for("the release in the journal with TINYMQ_PEER",
             lambda: any(e["MESSAGE"] == f"destination {host}:9000 released"
                         for e in S.journal(src, f"TINYMQ_PEER={host}:9000")), 10)
    # flush needs the daemon (control socket): a member may ask it.
    out = tinymq(src, "flush").stdout
    assert re.fullmatch(r"flushed \d+ destinations?", out.strip()), out
    assert tinymq(src, f"flush {host}").stdout.strip() == "flushed 1 destination"


def test_a_user_outside_group_tinymq_gets_one_clear_line(releases):
    c = releases.trixie
    c.run(f"id {OUTSIDER} >/dev/null 2>&1 || adduser --disabled-password --gecos '' "
          f"{OUTSIDER} >/dev/null")
    assert "tinymq" not in c.out(f"id -nG {OUTSIDER}").split()
    holds = c.sql("SELECT count(*) FROM tinymq_holds;")
    queued_before = S.count(c, "mqout")
    for args in ("send deb12 from-eve", "recv", "recv --keep --json", "status",
                 "status --json", "queue", "hold deb12", "release deb12", "delete 1"):
        one_error_line(tinymq(c, args, user=OUTSIDER, check=False),
                       f"database {S.DB}: permission denied", "group tinymq")
    one_error_line(tinymq(c, "flush", user=OUTSIDER, check=False),
                   f"control socket {SOCKET}: permission denied", "group tinymq")
    # Refused means nothing done.
    assert c.sql("SELECT count(*) FROM tinymq_holds;") == holds
    assert S.count(c, "mqout") == queued_before
    assert S.count(c, "mqout", "data='from-eve'") == 0


# ------------------------------------------------------------------ systemctl reload

def _debug_lines(c):
    """The daemon's debug lines about sends to UNROUTABLE (logged at log_level debug only)."""
    return S.daemon_lines(c, f"send to {UNROUTABLE}:9000 failed")


def _send_and_check_delivered(src, dst, data):
    """tinymq send --wait as a member of group tinymq: exit 0 once delivered; its stderr."""
    p = tinymq(src, f"send --wait=30 {dst.hostname} {data}", check=False)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert received(dst, f"data='{data}'") == 1
    return p.stderr


@pytest.mark.parametrize("release", ["trixie", "bookworm"])
def test_reload_applies_the_log_level_and_a_bad_file_keeps_the_running_one(releases, release):
    c = getattr(releases, release)
    peer = releases.bookworm if c is releases.trixie else releases.trixie
    pid = c.show("MainPID")
    c.run(f"cp {CONF} /root/tinymq.yaml.orig")
    x = None
    try:
        # A row to an address without a route: the daemon tries it again and again, and
        # each failed send is a debug line, not logged at the shipped level (info).
        assert c.out(f"grep '^log_level:' {CONF}") == "log_level: info"
        x = int(tinymq(c, f"send {UNROUTABLE} never-delivered").stdout)
        wait_for("the unroutable row's last_error",
                 lambda: "no answer from" in (queued(c)[x]["last_error"] or ""), 20)
        assert not _debug_lines(c), "debug lines at log_level info"

        # log_level: debug, checked first as the README says, then reloaded.
        c.run(f"sed -i 's/^log_level: .*/log_level: debug/' {CONF} && tinymqd --check-config")
        line = S.reload_tinymq(c)
        assert line == f"{S.RELOADED}{CONF}", line
        assert (c.show("ActiveState"), c.show("SubState"), c.show("MainPID")) == \
            ("active", "running", pid), "the reload restarted or stopped the daemon"
        wait_for("debug lines once reloaded with log_level: debug", lambda: _debug_lines(c), 10)
        assert _send_and_check_delivered(c, peer, f"after-reload-{release}") == ""

        # A broken file: --check-config says so, and a reload keeps what runs.
        c.run(f"sed -i 's/^log_level: .*/log_level: loud/' {CONF}")
        p = c.run("tinymqd --check-config", check=False)
        assert p.returncode == 78 and "log_level" in p.stdout + p.stderr, (p.returncode, p.stderr)
        line = S.reload_tinymq(c, S.RELOAD_FAILED)
        assert CONF in line and "'log_level'" in line and "'loud'" in line, line
        assert (c.show("ActiveState"), c.show("SubState"), c.show("MainPID")) == \
            ("active", "running", pid), "a bad reload stopped or restarted the daemon"
        # Still at debug, the running configuration: debug lines go on after the failure.
        def debug_after_failure():
            lines = S.daemon_lines(c)
            failed_at = len(lines) - 1 - lines[::-1].index(line)
            return any(ln.startswith(f"send to {UNROUTABLE}") for ln in lines[failed_at + 1:])
        wait_for("debug lines after the failed reload", debug_after_failure, 10)
        assert "Traceback" not in "\n".join(S.daemon_lines(c))
        # tinymq, which uses only database and control_socket, still sends (and warns).
        err = _send_and_check_delivered(c, peer, f"after-bad-reload-{release}")
        assert err.startswith("tinymq: warning: ") and "'log_level'" in err, err
        assert len(err.splitlines()) == 1, err
    finally:
        c.run(f"mv /root/tinymq.yaml.orig {CONF}")
        if x is not None:
            tinymq(c, f"delete {x}", check=False)
        if c.show("ActiveState") == "active":
            S.reload_tinymq(c)
    assert c.show("MainPID") == pid


# ------------------------------------------------------------ structured journal fields

def test_peer_events_carry_tinymq_peer_and_the_start_line_tinymq_node(releases):
    src, dst = releases.bookworm, releases.trixie
    peer = f"{dst.hostname}:9000"  # the destination as the row names it, with its port
    data = "while-the-peer-was-down"

    def said(text):
        return [e for e in S.journal(src, f"TINYMQ_PEER={peer}") if text in e["MESSAGE"]]
    down, back = f"destination {peer} is not answering", f"destination {peer} is back"
    before = len(said(down)), len(said(back))
    dst.run("systemctl stop tinymq")
    try:
        x = int(tinymq(src, f"send {dst.hostname} {data}").stdout)
        wait_for(f"{src.hostname} to log {down!r}", lambda: len(said(down)) > before[0], 20)
    finally:
        dst.run("systemctl start tinymq")
    tinymq(src, f"flush {dst.hostname}")
    wait_for(f"{data!r} at {dst.hostname}",
             lambda: received(dst, f"data='{data}'") == 1 and x not in queued(src), 20)
    wait_for(f"{src.hostname} to log {back!r}", lambda: len(said(back)) > before[1], 10)

    entries = S.journal(src, f"TINYMQ_PEER={peer}")
    assert entries
    for e in entries:
        assert e["TINYMQ_PEER"] == peer and peer in e["MESSAGE"], e
        assert e["_SYSTEMD_UNIT"] == "tinymq.service" and e["SYSLOG_IDENTIFIER"] == "tinymqd", e
        if "TINYMQ_STREAM" in e:
            assert re.fullmatch(r"[0-9a-f]{16}", e["TINYMQ_STREAM"]), e
    # The README's own command, as the admin types it, finds them too.
    out = src.out(f"journalctl -u tinymq --no-pager -q -o cat TINYMQ_PEER={peer}")
    assert f"destination {peer} is back" in out.splitlines(), out
    # Nothing for peers that never were.
    for made_up in ("nosuchhost:9000", f"{dst.hostname}:9001", "10.200.0.99:9000"):
        assert S.journal(src, f"TINYMQ_PEER={made_up}") == [], made_up
        assert src.out(f"journalctl -u tinymq --no-pager -q -o cat "
                       f"TINYMQ_PEER={shlex.quote(made_up)}") == ""
    # This node's lines carry TINYMQ_NODE: the start-up line names the node.
    node = status_json(src)["daemon"]["node"]
    lines = [e["MESSAGE"] for e in S.journal(src, f"TINYMQ_NODE={node}")]
    assert any(f"started: node {node}" in m for m in lines), lines
    assert S.journal(src, "TINYMQ_NODE=0123456789abcdef") == []
