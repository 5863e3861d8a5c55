"""Gate: which keys a source address may seal with, across reloads."""

from tinymqd import gate, keys

K1, K2 = b"1" * 32, b"2" * 32


class Origin:
    sessions = None


def test_a_lookup_a_reload_overtakes_does_not_outlive_the_reload():
    """The receiver thread looks up a source's keys while a reload (another thread)
    replaces them: what it found with the old keys must not be cached for the new ones
    (a revoked key would still be accepted until the next reload)."""
    old = keys.PeerKeys({"127.0.0.1": ["k1"]}, {"k1": K1, "k2": K2})
    new = keys.PeerKeys({"127.0.0.1": ["k2"]}, {"k1": K1, "k2": K2})  # k1 revoked
    g = gate.Gate(Origin(), old, True, None)
    looked_up = old.for_source

    def reload_lands_during_the_lookup(ip):
        found = looked_up(ip)
        g.reconfigure(new, True, None)
        return found

    old.for_source = reload_lands_during_the_lookup
    g.keys_for("127.0.0.1")  # the lookup in flight when the reload came
    assert [name for name, _ in g.keys_for("127.0.0.1")] == ["k2"]


def test_unkeyed_gate_asks_for_no_keys():
    g = gate.Gate(Origin(), keys.PeerKeys({}, {}), False, None)
    assert g.keys_for("127.0.0.1") == []


def test_a_peers_entry_written_ipv4_mapped_matches_that_ipv4_source():
    peers = keys.PeerKeys({"::ffff:10.0.0.1": ["k1"], "::ffff:10.1.0.0/112": ["k2"]},
                          {"k1": K1, "k2": K2})
    for source, name in (("10.0.0.1", "k1"), ("::ffff:10.0.0.1", "k1"), ("10.1.0.7", "k2")):
        assert [n for n, _ in peers.for_source(source)] == [name], source
    assert peers.for_source("10.0.0.2") == []
