"""Shared fixtures: daemons, relays and sinks that are cleaned up even when a test fails."""

import pytest

from tests.support.daemon import Daemon
from tests.support.relay import Relay
from tests.support.sink import UdpSink

DEFAULT_TIMEOUT = 60  # seconds per test unless it says otherwise (pytest-timeout)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request):
    return any(getattr(request.node, f"rep_{w}", None) is not None
               and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))


@pytest.fixture
def make_daemon(tmp_path, request):
    """Factory: make_daemon("a", **config) -> Daemon (not started); daemon_class= a
    subclass of Daemon to run it differently. All are stopped at teardown; on failure
    their stderr tails are printed."""
    created = []

    def factory(name="a", daemon_class=Daemon, **config):
        d = daemon_class(tmp_path, name, **config)
        created.append(d)
        return d

    yield factory
    for d in created:
        d.cleanup()
    if _failed(request):
        for d in created:
            print(f"\n----- stderr of {d.name} (port {d.port}, {d.stderr_path}) -----")
            print(d.stderr_tail(60, whole=True))


@pytest.fixture
def start_daemon(make_daemon):
    """Factory: start_daemon("a", **config) -> Daemon that has sent READY=1."""
    def factory(name="a", **config):
        return make_daemon(name, **config).start()
    return factory


@pytest.fixture
def pair(start_daemon):
    """Two running daemons a and b on loopback."""
    return start_daemon("a"), start_daemon("b")


@pytest.fixture
def make_relay():
    """Factory: make_relay((host, port), **faults) -> started Relay; stopped at teardown."""
    relays = []

    def factory(target, **kwargs):
        r = Relay(target, **kwargs).start()
        relays.append(r)
        return r

    yield factory
    for r in relays:
        r.stop()


@pytest.fixture
def make_sink():
    """Factory: make_sink() -> UdpSink on a loopback port; closed at teardown."""
    sinks = []

    def factory(**kwargs):
        s = UdpSink(**kwargs)
        sinks.append(s)
        return s

    yield factory
    for s in sinks:
        s.close()
