"""Debian 13 (trixie, stable) as well as Debian 12 (bookworm, oldstable): the same
./tinymq.deb installs on trixie, its service is enabled, active and as confined as
on bookworm, and messages cross between a trixie and a bookworm host both ways."""

import pytest

import systest as S
from systest import DB, wait_for


def test_the_hosts_run_debian_13_and_12(releases):
    new, old = releases.trixie, releases.bookworm
    assert new.out(". /etc/os-release; echo $VERSION_ID $VERSION_CODENAME") == "13 trixie"
    assert old.out(". /etc/os-release; echo $VERSION_ID $VERSION_CODENAME") == "12 bookworm"
    # What tinymqd runs on there (SQLite through Python's sqlite3 module).
    assert new.out("python3 -c 'import sys; print(*sys.version_info[:2])'") == "3 13"
    assert new.out("python3 -c 'import sqlite3; print(sqlite3.sqlite_version)'").startswith("3.46.")


def test_install_enables_and_starts_the_service_on_debian_13(releases):
    c = releases.trixie
    assert "Setting up tinymq" in releases.install_output[c.hostname]
    assert c.out("systemctl is-enabled tinymq") == "enabled"
    assert c.out("systemctl is-active tinymq") == "active"
    assert c.show("Type") == "notify"
    assert c.show("User") == "tinymq"
    assert c.show("SubState") == "running"
    assert c.out("tinymqd --version") == releases.bookworm.out("tinymqd --version")
    assert c.out("tinymqd --check-config; echo rc=$?").endswith("rc=0")
    assert c.out("stat -c '%U:%G %a' /var/lib/tinymq") == "tinymq:tinymq 2770"
    assert c.out(f"stat -c '%U:%G %a' {DB}") == "tinymq:tinymq 660"


def test_journal_on_debian_13_has_the_startup_line_and_no_traceback(releases):
    c = releases.trixie
    version = c.out("tinymqd --version").split()[-1]

    def startup_line():
        log = c.out("journalctl -u tinymq -b --no-pager -o cat")
        return [line for line in log.splitlines()
                if version in line and "9000" in line and DB in line]
    wait_for("tinymqd's start-up line in journalctl -u tinymq on Debian 13", startup_line, 10)
    log = c.out("journalctl -u tinymq -b --no-pager")
    assert "Traceback" not in log and "Warning" not in log, log


def test_unit_file_verifies_cleanly_on_debian_13(releases):
    releases.trixie.assert_unit_verifies()


def test_security_exposure_is_at_most_2_on_debian_13(releases):
    level, report = releases.trixie.exposure()
    assert level <= 2.0, report


@pytest.mark.parametrize("direction", ["13->12", "12->13"])
def test_message_crosses_between_debian_13_and_12(releases, direction):
    new, old = releases.trixie, releases.bookworm
    src, dst = (new, old) if direction == "13->12" else (old, new)
    data = f"hello-from-{src.hostname}-to-{dst.hostname}"
    # As the README says, by name, as a member of group tinymq on both ends.
    S.readme_insert(src, dst.hostname, data, user="alice")

    def arrived():
        return dst.run(f"echo \"SELECT shost, sport, token FROM mqin WHERE data='{data}';\" "
                       f"| sqlite3 {DB}", user="alice").stdout.strip().splitlines()
    rows = wait_for(f"{data!r} in {dst.hostname}'s mqin", arrived, 20)
    assert len(rows) == 1, rows
    shost, sport, token = rows[0].split("|")
    assert shost in (src.address, f"::ffff:{src.address}")
    assert (sport, token) == ("9000", "token")
    wait_for(f"the row to leave {src.hostname}'s mqout",
             lambda: S.count(src, "mqout", f"data='{data}'") == 0, 10)


def test_restart_on_debian_13_during_a_stream_both_ways_loses_nothing(releases):
    new, old = releases.trixie, releases.bookworm
    n = 300
    to_new = S.paced_insert(old, new.hostname, "to13", n)
    to_old = S.paced_insert(new, old.hostname, "to12", n)
    try:
        wait_for("100 messages at deb13", lambda: S.count(new, "mqin", "data LIKE 'to13-%'") >= 100, 60)
        new.run("systemctl restart tinymq")
        assert new.show("ActiveState") == "active"
    finally:
        for p in (to_new, to_old):
            p.wait(60)
    for p in (to_new, to_old):
        assert p.returncode == 0, p.stderr.read()
    S.assert_exactly_once(new, old, "to13", n)
    S.assert_exactly_once(old, new, "to12", n)
