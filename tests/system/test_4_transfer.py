"""systemctl restart of either daemon in the middle of 1,000 messages."""

import systest as S
from systest import wait_for

N = 1000


def test_restart_during_transfer_delivers_each_message_once(pair):
    a, b = pair.a, pair.b
    like = "data LIKE 'restart-%'"
    inserter = S.paced_insert(a, "hostb", "restart", N)
    try:
        for host, after in ((a, 200), (b, 500), (a, 700)):
            wait_for(f"{after} messages at hostb", lambda: S.count(b, "mqin", like) >= after, 60)
            # Mid-transfer: messages are still being enqueued and sent.
            assert inserter.poll() is None and S.count(b, "mqin", like) < N
            host.run("systemctl restart tinymq")
            assert host.show("ActiveState") == "active"
    finally:
        inserter.wait(60)
    assert inserter.returncode == 0, inserter.stderr.read()
    S.assert_exactly_once(b, a, "restart", N)
