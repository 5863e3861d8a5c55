"""Reinstall, upgrade, remove and purge: data and an edited config survive
until purge, and purge removes them. One container, steps in order."""

import pytest

import systest as S
from systest import DB

CONF = "/etc/tinymq.yaml"
EDIT = "\n# edited by the administrator\nlog_level: debug\n"


@pytest.fixture(scope="module")
def newer(debdir):
    path, version = S.build_newer_deb(debdir)
    return f"/srv/debs/{path.name}", version


@pytest.fixture(scope="module")
def host(solo, newer):
    c = solo.c
    c.install("/srv/debs/tinymq.deb")
    assert c.out("systemctl is-active tinymq") == "active"
    # Queue messages for a destination that never answers, and keep a
    # received message: both must survive everything but purge.
    for i in range(5):
        S.readme_insert(c, "10.200.0.2", f"queued-{i}")
    c.sql("INSERT INTO mqin (shost, sport, token, data) VALUES ('10.200.0.9', 9000, 't', 'kept');")
    c.run(f"printf '{EDIT}' >> {CONF}")
    c.run("systemctl restart tinymq")
    return c


def _assert_kept(c, conf):
    assert c.out(f"cat {CONF}") == conf, "the edited config was not kept"
    assert S.count(c, "mqout", "data LIKE 'queued-%'") == 5
    assert S.count(c, "mqin", "data='kept'") == 1


def test_reinstall_keeps_database_and_config(host):
    conf = host.out(f"cat {CONF}")
    host.install("/srv/debs/tinymq.deb", extra="--reinstall")
    assert host.out("systemctl is-active tinymq") == "active"
    _assert_kept(host, conf)


def test_upgrade_keeps_queue_and_edited_config(host, newer):
    deb, version = newer
    conf = host.out(f"cat {CONF}")
    pid = host.show("MainPID")
    host.install(deb)  # stdin is /dev/null: a conffile prompt would fail here
    assert host.out("dpkg-query -W -f '${Version}' tinymq") == version
    assert host.out("systemctl is-active tinymq") == "active"
    assert host.show("MainPID") != pid, "the upgrade did not restart the daemon"
    _assert_kept(host, conf)
    assert not host.run(f"test -e {CONF}.dpkg-dist -o -e {CONF}.dpkg-old", check=False).returncode == 0


def test_remove_keeps_data_and_config(host):
    conf = host.out(f"cat {CONF}")
    host.run("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q tinymq </dev/null")
    assert host.run("systemctl is-active tinymq", check=False).stdout.strip() in ("inactive", "unknown")
    host.run("! (stat -c %U /proc/[0-9]* 2>/dev/null | grep -qx tinymq)")
    host.run("test ! -e /usr/bin/tinymqd")
    _assert_kept(host, conf)


def test_purge_removes_config_and_data(host):
    host.run("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tinymq </dev/null")
    host.run(f"test ! -e {CONF}")
    host.run("test ! -e /var/lib/tinymq")
    host.run("test ! -e /etc/systemd/system/multi-user.target.wants/tinymq.service")
    assert host.run("dpkg-query -W -f '${Status}' tinymq", check=False).stdout.strip() in (
        "", "unknown ok not-installed")


def test_enqueue_works_before_the_daemon_first_ran(host):
    """Installed where services are not started (policy-rc.d, as in a chroot or an
    image build): the tables are there at once, for root and for group members."""
    host.run("printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d"
             " && chmod 755 /usr/sbin/policy-rc.d")
    try:
        host.install("/srv/debs/tinymq.deb")
    finally:
        host.run("rm -f /usr/sbin/policy-rc.d")
    assert host.run("systemctl is-active tinymq", check=False).stdout.strip() != "active"
    host.run("adduser --disabled-password --gecos '' bob >/dev/null && adduser bob tinymq >/dev/null")
    S.readme_insert(host, "10.200.0.2", "early-root")
    S.readme_insert(host, "10.200.0.2", "early-bob", user="bob")
    host.run("systemctl start tinymq")
    assert host.out("systemctl is-active tinymq") == "active"
    # Numbered on insert by the daemon's trigger: the tables came from the package.
    assert S.count(host, "mqout", "data LIKE 'early-%' AND seq IS NOT NULL") == 2
    host.run("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tinymq </dev/null")
    host.run("test ! -e /var/lib/tinymq")


def test_install_after_purge_starts_afresh(host):
    host.install("/srv/debs/tinymq.deb")
    assert host.out("systemctl is-active tinymq") == "active"
    assert S.count(host, "mqout") == 0 and S.count(host, "mqin") == 0
    assert host.out(f"stat -c '%U:%G %a' {DB}") == "tinymq:tinymq 660"
