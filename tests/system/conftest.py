"""Fixtures for the system tests: the package installed in Debian 12 and 13
containers booted with systemd. Run with `make test-system` (root; builds ./tinymq.deb
first) or `/usr/bin/python3 -m pytest tests/system` after `make deb`; a plain
`pytest` over all of tests/ and `make test` skip them."""

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import systest as S

HERE = Path(__file__).resolve().parent
TAG = f"{os.getpid() % 100000}"
ENABLED = os.environ.get("TINYMQ_SYSTEM_TESTS") == "1"
LIVE = []  # booted containers, for failure reports


def _asked_for(config):
    """True when the command line names tests/system (or a test in it), or
    selects -m system; a plain `pytest` over all of tests/ skips them."""
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return "system" in (config.getoption("markexpr") or "")


def pytest_collection_modifyitems(config, items):
    enabled = ENABLED or _asked_for(config)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.system)
            item.add_marker(pytest.mark.timeout(600), append=False)
            if not enabled:
                item.add_marker(pytest.mark.skip(reason="system test: run `make test-system`"))
            elif os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="system tests need root"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for c in list(LIVE):
            with contextlib.suppress(Exception):
                p = c.run("journalctl -u tinymq --no-pager -n 40 -o short-precise", check=False, timeout=20)
                report.sections.append((f"journal of tinymq on {c.hostname}", p.stdout + p.stderr))


@pytest.fixture(scope="session")
def images():
    """{suite: cached root} for Debian 12 (bookworm) and 13 (trixie)."""
    S.sweep()
    yield S.ensure_images()
    S.forget_run()  # everything this run made is gone by now


@pytest.fixture(scope="session")
def image(images):
    return images[S.BOOKWORM]


@pytest.fixture(scope="session")
def debdir():
    """A directory bind-mounted read-only at /srv/debs in every container."""
    deb = Path(os.environ.get("TINYMQ_TEST_DEB", S.REPO / "tinymq.deb"))
    if not deb.exists():
        subprocess.run(["make", "-C", str(S.REPO), "deb"], check=True)
    d = Path(tempfile.mkdtemp(prefix="tinymq-debs-"))
    shutil.copy2(deb, d / "tinymq.deb")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Hosts:
    """Containers on one network, each in its own namespace; image is one root for
    all of them or a list with one root per name."""

    def __init__(self, image, debdir, tag, names, boot):
        roots = image if isinstance(image, (list, tuple)) else [image] * len(names)
        self.net = S.Network(tag, len(names)).create()
        table = dict(zip(names, self.net.addrs))
        self.containers = [
            S.Container(root, f"tmq{tag}-{n}", n, ns, addr, table, binds=[(debdir, "/srv/debs")])
            for n, root, ns, addr in zip(names, roots, self.net.names, self.net.addrs)][:boot]
        self.addrs = table

    def boot(self):
        S.boot_all(self.containers)
        LIVE.extend(self.containers)
        return self

    def close(self):
        for c in self.containers:
            if c in LIVE:
                LIVE.remove(c)
        S.stop_all(self.containers)
        self.net.destroy()


def install_and_prepare(c, deb="/srv/debs/tinymq.deb"):
    out = c.install(deb).stdout
    # An unprivileged member of group tinymq, added the way the README says.
    c.run("adduser --disabled-password --gecos '' alice >/dev/null && adduser alice tinymq >/dev/null")
    return out


@pytest.fixture(scope="session")
def pair(image, debdir):
    """hosta (10.200.0.1) and hostb (10.200.0.2), each with tinymq installed."""
    hosts = Hosts(image, debdir, TAG + "p", ["hosta", "hostb"], boot=2)
    try:
        hosts.boot()
        a, b = hosts.containers
        outputs = {}

        def inst(c):
            outputs[c.hostname] = install_and_prepare(c)
        S.run_parallel([lambda: inst(a), lambda: inst(b)])
        hosts.a, hosts.b = a, b
        hosts.install_output = outputs
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="module")
def solo(image, debdir):
    """hostc (10.200.0.1) with nothing installed yet; 10.200.0.2 exists but
    runs nothing (a destination that never answers)."""
    hosts = Hosts(image, debdir, TAG + "s", ["hostc", "hostd"], boot=1)
    try:
        hosts.boot()
        hosts.c = hosts.containers[0]
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="module")
def releases(images, debdir):
    """deb13 (Debian 13, 10.200.0.1) and deb12 (Debian 12, 10.200.0.2), each with
    tinymq installed: the package on both supported releases, talking to each other."""
    hosts = Hosts([images[S.TRIXIE], images[S.BOOKWORM]], debdir, TAG + "r",
                  ["deb13", "deb12"], boot=2)
    try:
        hosts.boot()
        new, old = hosts.containers
        outputs = {}

        def inst(c):
            outputs[c.hostname] = install_and_prepare(c)
        S.run_parallel([lambda: inst(new), lambda: inst(old)])
        hosts.trixie, hosts.bookworm = new, old
        hosts.install_output = outputs
        yield hosts
    finally:
        hosts.close()
