"""Keyed peers, set up exactly as the README says ("Keys: authenticated, encrypted
peers"), between a Debian 13 and a Debian 12 host: the key file /etc/tinymq.keys
(0640 root:tinymq, the same key on both), `peers: {"*": site}`, tinymq restarted
under its sandbox. Messages cross both ways sealed (nothing readable on the wire,
mqin.key names the key); with a wrong key nothing is delivered and the sender's
last_error says to check the keys; a key file others may read is refused; a key is
rotated the README's way (systemctl reload after each step) while messages keep
flowing."""

import pytest

import systest as S
from systest import DB, wait_for

KEYS = "/etc/tinymq.keys"
CONF = "/etc/tinymq.yaml"
# The README's commands (as root in the containers: no sudo there).
MAKE_KEY_FILE = f"install -m 0640 -o root -g tinymq /dev/null {KEYS}"
NEW_KEY_LINE = 'echo "{name}: $(head -c 32 /dev/urandom | base64)" | tee {tee} ' + KEYS
README_CONFIG = 'key_file: /etc/tinymq.keys\npeers:\n  "*": site\n'
CHECK_AS_DAEMON = "runuser -u tinymq -- tinymqd --check-config"  # README: sudo -u tinymq
CHECK_THE_KEYS = "(check that both have this key in key_file and peers)"


def restart(*hosts):
    for c in hosts:
        c.run(f"{CHECK_AS_DAEMON} && systemctl restart tinymq")
        assert c.show("ActiveState") == "active", c.hostname


def reload(*hosts):
    """systemctl reload, as the README says for each step of a rotation (waiting for
    the daemon's line saying it reloaded the configuration)."""
    for c in hosts:
        c.run(CHECK_AS_DAEMON)
        S.reload_tinymq(c)
        assert c.show("ActiveState") == "active", c.hostname


def set_peers(c, value):
    """Replace the `"*":` line the README's config has under peers."""
    c.run(f"sed -i 's/^  \"\\*\": .*/  \"*\": {value}/' {CONF} && grep -qxF '  \"*\": {value}' {CONF}")


@pytest.fixture(scope="module")
def keyed(releases):
    """The Debian 13 and 12 hosts of `releases`, with the README's key set-up."""
    a, b = releases.trixie, releases.bookworm
    # Before keys, for contrast: a message crosses unsealed, readable on the wire (so
    # the capture below sees what it must), and mqin.key is NULL.
    data = "before-keys-in-clear"
    with S.Sniffer(releases.net.names[1]) as wire:
        S.readme_insert(a, b.hostname, data, user="alice")
        rows = wait_for(f"{data!r} at {b.hostname}", lambda: _arrived(b, data), 20)
    assert rows[0].endswith("|token|"), rows  # key NULL
    assert any(data.encode() in p for p in wire.payloads), "the capture missed the datagram"
    # One host makes the key; tee prints the line, which goes into the other's file.
    a.run(MAKE_KEY_FILE)
    line = a.out(NEW_KEY_LINE.format(name="site", tee=""))
    assert line.startswith("site: ") and len(line) == len("site: ") + 44, line
    b.run(MAKE_KEY_FILE)
    b.run(f"cat > {KEYS}", input=line + "\n")
    for c in (a, b):
        c.run(f"cat >> {CONF}", input=README_CONFIG)
    restart(a, b)
    releases.a, releases.b, releases.key_line = a, b, line
    return releases


def _arrived(dst, data, user="alice"):
    return dst.run(f"echo \"SELECT shost, token, key FROM mqin WHERE data='{data}';\" "
                   f"| sqlite3 {DB}", user=user).stdout.strip().splitlines()


def _last_error(src, data):
    return src.sql(f"SELECT last_error FROM mqout WHERE data='{data}';")


def test_key_file_is_the_readmes_and_the_sandboxed_daemon_reads_it(keyed):
    for c in (keyed.a, keyed.b):
        assert c.out(f"stat -c '%U:%G %a' {KEYS}") == "root:tinymq 640"
        assert c.out(f"cat {KEYS}") == keyed.key_line
        assert c.out(f"{CHECK_AS_DAEMON}; echo rc=$?").endswith("rc=0")
        assert c.show("SubState") == "running"
        # The daemon (User=tinymq, under PrivateUsers=yes) reads it through its group;
        # any other user cannot.
        p = c.run(f"runuser -u nobody -- cat {KEYS}", check=False)
        assert p.returncode != 0 and "Permission denied" in p.stderr, p.stdout + p.stderr
        log = c.out("journalctl -u tinymq -b --no-pager -o cat")
        assert "Traceback" not in log, log


@pytest.mark.parametrize("direction", ["13->12", "12->13"])
def test_sealed_message_crosses_both_ways(keyed, direction):
    a, b = keyed.a, keyed.b
    src, dst = (a, b) if direction == "13->12" else (b, a)
    data = f"sealed-from-{src.hostname}-to-{dst.hostname}"
    token = f"token-{src.hostname}"
    # Captured on the receiver's side, where both directions pass.
    with S.Sniffer(keyed.net.names[keyed.containers.index(dst)]) as wire:
        # As the README says, by name, as a member of group tinymq.
        S.readme_insert(src, dst.hostname, data, user="alice", token=token)
        rows = wait_for(f"{data!r} in {dst.hostname}'s mqin", lambda: _arrived(dst, data), 20)
        wait_for(f"the row to leave {src.hostname}'s mqout",
                 lambda: S.count(src, "mqout", f"data='{data}'") == 0, 10)
    assert len(rows) == 1, rows
    shost, got_token, key = rows[0].split("|")
    assert shost in (src.address, f"::ffff:{src.address}")
    assert (got_token, key) == (token, "site"), "mqin.key must name the key that opened it"
    # On the wire: tinymq datagrams, every one sealed, neither data nor token in clear.
    datagrams = [p for p in wire.payloads if p[:3] == b"TMQ"]
    assert datagrams, f"no tinymq datagram captured ({len(wire.payloads)} UDP payloads)"
    unsealed = [p[:48].hex() for p in datagrams if not p[5] & 0x01]
    assert not unsealed, f"{len(unsealed)} of {len(datagrams)} datagrams unsealed: {unsealed[:3]}"
    for secret in (data, token):
        assert not any(secret.encode() in p for p in wire.payloads), f"{secret!r} in clear"


def test_wrong_key_delivers_nothing_and_last_error_says_check_the_keys(keyed):
    a, b = keyed.a, keyed.b
    # A key of the same name but other bytes on the Debian 12 host, written into the
    # existing file (its mode and owner stay).
    b.run(f"echo \"site: $(head -c 32 /dev/urandom | base64)\" > {KEYS}")
    assert b.out(f"stat -c '%U:%G %a' {KEYS}") == "root:tinymq 640"
    assert b.out(f"cat {KEYS}") != keyed.key_line
    restart(b)
    sent = {(a, b): "wrong-key-13-to-12", (b, a): "wrong-key-12-to-13"}
    try:
        for (src, dst), data in sent.items():
            S.readme_insert(src, dst.hostname, data, user="alice")
        for (src, dst), data in sent.items():
            error = wait_for(f"last_error of {data!r} at {src.hostname}",
                             lambda: CHECK_THE_KEYS in _last_error(src, data)
                             and _last_error(src, data), 30)
            assert f"no answer sealed with key 'site' from {dst.hostname}:9000" in error, error
            assert S.count(dst, "mqin", f"data='{data}'") == 0, f"{data} delivered"
        # Nothing arrives however long the keys differ, and the rows stay queued.
        S.holds_for("nothing delivered with a wrong key",
                    lambda: all(S.count(dst, "mqin", f"data='{data}'") == 0
                                and S.count(src, "mqout", f"data='{data}'") == 1
                                for (src, dst), data in sent.items()), 5)
    finally:
        b.run(f"cat > {KEYS}", input=keyed.key_line + "\n")
        restart(b)
    # With the keys matching again, what waited is delivered, sealed, once.
    for (src, dst), data in sent.items():
        rows = wait_for(f"{data!r} in {dst.hostname}'s mqin once the keys match",
                        lambda: _arrived(dst, data), 30)
        assert len(rows) == 1 and rows[0].endswith("|site"), rows
        wait_for(f"{data!r} to leave {src.hostname}'s mqout",
                 lambda: S.count(src, "mqout", f"data='{data}'") == 0, 10)


@pytest.mark.parametrize("mode,problem", [("0644", "is readable by others"),
                                          ("0660", "is writable by group or others")])
def test_key_file_others_may_read_or_write_is_refused(keyed, mode, problem):
    c = keyed.b
    c.run(f"chmod {mode} {KEYS}")
    try:
        p = c.run("tinymqd --check-config", check=False)
        lines = (p.stdout + p.stderr).strip().splitlines()
        assert p.returncode == 78, (p.returncode, lines)
        assert len(lines) == 1, lines
        assert CONF in lines[0] and KEYS in lines[0] and problem in lines[0], lines[0]
        assert "0640 root:tinymq" in lines[0], lines[0]
        # The service refuses it too, once, with the same line in its journal.
        assert c.run("systemctl restart tinymq", check=False).returncode != 0
        assert c.show("ActiveState") == "failed"
        assert c.show("ExecMainStatus") == "78"
        wait_for("the refusal in journalctl -u tinymq",
                 lambda: problem in c.out("journalctl -u tinymq -b --no-pager -o cat"), 10)
    finally:
        c.run(f"chmod 0640 {KEYS} && systemctl reset-failed tinymq")
        restart(c)


def test_key_rotation_the_readmes_way_keeps_messages_flowing(keyed):
    a, b = keyed.a, keyed.b
    n = 0

    def exchange(expected_keys):
        """One message each way; returns {direction: key that opened it}."""
        nonlocal n
        n += 1
        got = {}
        for src, dst in ((a, b), (b, a)):
            data = f"rotation-{n}-{src.hostname}"
            S.readme_insert(src, dst.hostname, data, user="alice")
            rows = wait_for(f"{data!r} in {dst.hostname}'s mqin", lambda: _arrived(dst, data), 30)
            got[f"{src.hostname}->{dst.hostname}"] = rows[0].rsplit("|", 1)[1]
        assert got == expected_keys, got
        return got

    both = lambda key: {f"{a.hostname}->{b.hostname}": key, f"{b.hostname}->{a.hostname}": key}  # noqa: E731
    exchange(both("site"))
    # Each step is applied with systemctl reload on both hosts, as the README says.
    # 1. The new key, made on one host and copied to the other, goes into both files
    #    and at the end of both lists: accepted, not used yet.
    line = a.out(NEW_KEY_LINE.format(name="site2", tee="-a"))
    b.run(f"cat >> {KEYS}", input=line + "\n")
    for c in (a, b):
        assert c.out(f"stat -c '%U:%G %a' {KEYS}") == "root:tinymq 640"
        set_peers(c, "[site, site2]")
    reload(a, b)
    exchange(both("site"))
    # 2. First on one host, then on the other: each seals with the first of its list.
    set_peers(a, "[site2, site]")
    reload(a)
    exchange({f"{a.hostname}->{b.hostname}": "site2", f"{b.hostname}->{a.hostname}": "site"})
    set_peers(b, "[site2, site]")
    reload(b)
    exchange(both("site2"))
    # 3. The old key leaves both lists and both files.
    for c in (a, b):
        set_peers(c, "site2")
        c.run(f"sed -i '/^site: /d' {KEYS}")
        assert c.out(f"cat {KEYS}") == line
    reload(a, b)
    exchange(both("site2"))
