"""Keyed peers over real UDP: sealed traffic both ways, the key named in mqin, a wrong or
missing key delivering nothing and saying so, rotation, and nothing readable on the wire."""

import base64
import os

import pytest

from tests.support.checks import assert_series_delivered
from tests.support import db as dbmod
from tests.support.wait import holds_for, wait_until


def key_file(directory, **named):
    """A key file as the README says to make one (0640), with the given keys."""
    path = directory / "keys.yaml"
    path.write_text("".join(f"{name}: {base64.b64encode(key).decode()}\n"
                            for name, key in named.items()))
    path.chmod(0o640)
    return str(path)


@pytest.fixture
def secret():
    return os.urandom(32)


def keyed(make_daemon, tmp_path, name, peers, **keys):
    directory = tmp_path / f"keys-{name}"
    directory.mkdir()
    return make_daemon(name, key_file=key_file(directory, **keys), peers=peers).start()


@pytest.mark.timeout(60)
def test_sealed_messages_both_ways_name_their_key_and_show_nothing_on_the_wire(
        make_daemon, make_relay, tmp_path, secret):
    a = keyed(make_daemon, tmp_path, "a", {"*": "shared"}, shared=secret)
    b = keyed(make_daemon, tmp_path, "b", {"*": "shared"}, shared=secret)
    relay = make_relay(("127.0.0.1", b.port), capture=True)
    marker = "visible-only-to-keyholders-" + "q" * 40
    dbmod.enqueue_series(a.db, "127.0.0.1", relay.port, "sealed", 200, pad=50)
    a.enqueue(relay.port, "secret-token", marker)
    dbmod.enqueue_series(b.db, "127.0.0.1", a.port, "back", 100)
    assert_series_delivered(a, b, "sealed", 200, timeout=20)
    assert_series_delivered(b, a, "back", 100, timeout=20)
    wait_until(lambda: b.count("mqin", "token='secret-token'") == 1, 10, "marker delivered")
    assert b.query("SELECT DISTINCT key FROM mqin") == [("shared",)]
    assert a.query("SELECT DISTINCT key FROM mqin") == [("shared",)]
    seen = b"".join(relay.captured("forward") + relay.captured("reverse"))
    assert seen, "the relay captured the traffic"
    for plain in (marker.encode(), b"secret-token", b"sealed-000001"):
        assert plain not in seen, f"{plain!r} readable on the wire"


@pytest.mark.timeout(60)
def test_a_wrong_key_delivers_nothing_deletes_nothing_and_says_check_keys(
        make_daemon, tmp_path, secret):
    a = keyed(make_daemon, tmp_path, "a", {"*": "k"}, k=secret)
    b = keyed(make_daemon, tmp_path, "b", {"*": "k"}, k=os.urandom(32))
    x = a.enqueue(b, "t", "never readable by b")
    wait_until(lambda: a.query("SELECT last_error FROM mqout WHERE x=? AND last_error "
                               "LIKE '%check%key%'", (x,)), 15,
               "last_error says the peer does not answer sealed traffic",
               describe=lambda: a.query("SELECT last_error FROM mqout"))
    holds_for(lambda: b.count("mqin") == 0 and a.count("mqout", "x=?", (x,)) == 1, 1.0,
              "nothing delivered, nothing deleted")
    print(a.query("SELECT last_error FROM mqout"))
    a.assert_alive()
    b.assert_alive()


@pytest.mark.timeout(60)
def test_unsealed_traffic_is_refused_when_keys_are_required(make_daemon, tmp_path, secret):
    plain = make_daemon("plain").start()
    b = keyed(make_daemon, tmp_path, "b", {"192.0.2.0/24": "k"}, k=secret)  # not plain
    x = plain.enqueue(b, "t", "unsealed")
    holds_for(lambda: b.count("mqin") == 0 and plain.count("mqout", "x=?", (x,)) == 1, 2.0,
              "an unsealed message is not taken by a daemon that requires keys")
    y = b.enqueue(plain, "t", "to a peer without a key")
    wait_until(lambda: b.query("SELECT last_error FROM mqout WHERE x=? AND last_error "
                               "LIKE '%require_key%'", (y,)), 10,
               "a destination with no key gets last_error while require_key is set")


@pytest.mark.timeout(90)
def test_a_key_is_rotated_without_losing_a_message(make_daemon, tmp_path):
    old, new = os.urandom(32), os.urandom(32)
    a = keyed(make_daemon, tmp_path, "a", {"*": "old"}, old=old)
    b = keyed(make_daemon, tmp_path, "b", {"*": ["new", "old"]}, old=old, new=new)
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "rot", 50)
    assert_series_delivered(a, b, "rot", 50, timeout=20)
    a.stop()  # A moves to the new key; B accepts both meanwhile
    a.write_config(key_file=key_file(tmp_path / "keys-a", old=old, new=new),
                   peers={"*": ["new", "old"]})
    a.start()
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "rot", 50, start=51)
    assert_series_delivered(a, b, "rot", 100, timeout=20)
    assert set(b.query("SELECT DISTINCT key FROM mqin")) == {("old",), ("new",)}
