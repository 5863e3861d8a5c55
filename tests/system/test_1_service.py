"""The package installs, starts and runs tinymq.service as promised."""

import systest as S
from systest import DB, wait_for


def test_install_enables_and_starts_the_service(pair):
    for c in (pair.a, pair.b):
        assert "Setting up tinymq" in pair.install_output[c.hostname]
        assert c.out("systemctl is-enabled tinymq") == "enabled"
        assert c.out("systemctl is-active tinymq") == "active"
        assert c.show("Type") == "notify"
        assert c.show("User") == "tinymq"


def test_files_user_and_permissions(pair):
    c = pair.a
    passwd = c.out("getent passwd tinymq").split(":")
    assert passwd[5] == "/var/lib/tinymq" and passwd[6].endswith("nologin")
    assert c.out("getent group tinymq").split(":")[3] == "alice"
    assert c.out("stat -c '%U:%G %a' /var/lib/tinymq") == "tinymq:tinymq 2770"
    assert c.out(f"stat -c '%U:%G %a' {DB}") == "tinymq:tinymq 660"
    assert c.out("dpkg-query -W -f '${Conffiles}' tinymq").split()[0] == "/etc/tinymq.yaml"
    for path in ("/usr/bin/tinymqd", "/lib/systemd/system/tinymq.service",
                 "/usr/lib/sysusers.d/tinymq.conf", "/usr/lib/tmpfiles.d/tinymq.conf",
                 "/usr/share/man/man8/tinymqd.8.gz", "/usr/share/man/man5/tinymq.yaml.5.gz",
                 "/usr/share/doc/tinymq/copyright", "/usr/share/doc/tinymq/changelog.gz"):
        c.run(f"test -e {path}")
    assert c.out("tinymqd --version").startswith("tinymqd ")
    assert c.out("python3 -m tinymqd --version") == c.out("tinymqd --version")
    assert c.out("tinymqd --check-config; echo rc=$?").endswith("rc=0")


def test_start_returns_only_after_readiness(pair):
    c = pair.a
    c.run("systemctl stop tinymq")
    assert c.show("ActiveState") == "inactive"
    c.run("systemctl start tinymq")
    # Type=notify: the start job completes on READY=1, so at this point the
    # unit is already active and the daemon serves: socket bound, tables made.
    assert c.show("ActiveState") == "active"
    assert c.show("SubState") == "running"
    assert ":9000 " in c.out("ss -Hlun 'sport = :9000'") + " "
    assert c.sql("SELECT count(*) FROM mqout;").isdigit()
    pid = c.show("MainPID")
    assert pid != "0" and c.out(f"cat /proc/{pid}/comm").startswith(("tinymqd", "python"))


def test_status_text_comes_from_the_daemon(pair):
    c = pair.a
    status = c.show("StatusText")
    # systemd itself never sets StatusText: whatever is there came from STATUS=.
    assert status.strip(), "the daemon sent no STATUS="


def test_journal_has_the_startup_line(pair):
    c = pair.a
    version = c.out("tinymqd --version").split()[-1]

    def startup_line():
        log = c.out("journalctl -u tinymq -b --no-pager -o cat")
        return [line for line in log.splitlines()
                if version in line and "9000" in line and DB in line]
    lines = wait_for("tinymqd's start-up line in journalctl -u tinymq", startup_line, 10)
    assert lines
    # Logged natively, with structured fields (not only through stderr).
    assert c.out("journalctl -u tinymq -b --no-pager -o verbose SYSLOG_IDENTIFIER=tinymqd "
                 "| grep -c CODE_FILE= || true") != "0"


def test_unit_file_verifies_cleanly(pair):
    pair.a.assert_unit_verifies()


def test_security_exposure_is_at_most_2(pair):
    level, report = pair.a.exposure()
    assert level <= 2.0, report


def test_daemon_works_under_the_sandbox(pair):
    # The hardened unit still lets the daemon bind, write its database and
    # log: one message each way proves it (the exchange tests do more).
    S.readme_insert(pair.a, "10.200.0.2", "sandbox-ok")
    wait_for("sandbox-ok at hostb", lambda: S.count(pair.b, "mqin", "data='sandbox-ok'") == 1, 20)
