"""A destination whose database was replaced is a new node: what it had not committed
is sent again, and it never takes what was meant for the node it replaced."""

import os

import pytest

from tests.support.wait import holds_for, wait_until


@pytest.mark.timeout(60)
def test_destination_with_a_new_database_receives_what_is_pending(pair):
    a, b = pair
    a.enqueue(b, "t", "before")
    wait_until(lambda: b.count("mqin") == 1, 10, "first message delivered")
    b.stop()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{b.db}{suffix}"):
            os.unlink(f"{b.db}{suffix}")
    a.enqueue(b, "t", "after-1")
    a.enqueue(b, "t", "after-2")
    b.start()  # a fresh database: a new node identity
    wait_until(lambda: b.count("mqin") == 2 and a.count("mqout") == 0, 10,
               "pending messages delivered to the new node",
               describe=lambda: (a.query("SELECT x, data, last_error FROM mqout"),
                                 b.query("SELECT data FROM mqin")))
    assert [r[0] for r in b.query("SELECT data FROM mqin ORDER BY x")] == ["after-1",
                                                                         "after-2"]
    holds_for(lambda: b.count("mqin") == 2, 1.0, "no duplicates")
    assert "another node now" in a.stderr_text()
