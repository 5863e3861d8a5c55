"""Two hosts exchange messages both ways with the README's plain sqlite3
commands, by address and by name, as root and as a member of group tinymq."""

import itertools

import pytest

import systest as S
from systest import DB, wait_for

CASES = list(itertools.product(["a->b", "b->a"], ["address", "name"], ["root", "alice"]))


@pytest.mark.parametrize("direction,addressing,user", CASES,
                         ids=["-".join(c) for c in CASES])
def test_exchange(pair, direction, addressing, user):
    src, dst = (pair.a, pair.b) if direction == "a->b" else (pair.b, pair.a)
    target = dst.address if addressing == "address" else dst.hostname
    as_user = None if user == "root" else user
    data = f"hello-{src.hostname}-to-{dst.hostname}-by-{addressing}-as-{user}"

    S.readme_insert(src, target, data, user=as_user)

    def arrived():
        row = dst.run(f"echo \"SELECT x, shost, sport, token FROM mqin WHERE data='{data}';\" "
                      f"| sqlite3 {DB}", user=as_user).stdout.strip()
        return row.splitlines()
    rows = wait_for(f"{data!r} in {dst.hostname}'s mqin", arrived, 20)
    assert len(rows) == 1, rows
    x, shost, sport, token = rows[0].split("|")
    assert shost in (src.address, f"::ffff:{src.address}")
    assert (sport, token) == ("9000", "token")
    # Sent means gone from the sender's queue.
    wait_for("the sender's mqout row to go", lambda: S.count(src, "mqout", f"data='{data}'") == 0, 10)
    # The consumer deletes what it has processed.
    dst.run(f"echo 'DELETE FROM mqin WHERE x={x};' | sqlite3 {DB}", user=as_user)
    assert S.count(dst, "mqin", f"x={x}") == 0


def _files(c):
    return c.out("stat -c '%n %U:%G %a' /var/lib/tinymq/*").splitlines()


def test_no_file_locks_anyone_out(pair):
    for c in (pair.a, pair.b):
        for line in _files(c):
            name, owner, mode = line.split()
            assert owner.endswith(":tinymq") and mode in ("660", "2660"), line


@pytest.mark.parametrize("user", ["alice", "root"])
def test_queue_used_while_the_daemon_is_stopped(pair, user):
    """A user who opens the database while the daemon is down (and so creates
    the -wal/-shm files) locks neither the daemon nor the other users out."""
    a, b = pair.a, pair.b
    as_user = None if user == "root" else user
    other = "alice" if user == "root" else None
    a.run("systemctl stop tinymq")
    data = f"while-stopped-{user}"
    # Keep a connection open across the daemon's start: its -wal/-shm stay.
    holder = a.popen(f"(echo \"INSERT into mqout (host,port,token,data) VALUES "
                     f"('hostb','9000','token','{data}');\"; sleep 4) | sqlite3 {DB}", user=as_user)
    try:
        wait_for("the -wal file", lambda: a.run("test -e /var/lib/tinymq/tinymq.db-wal",
                                                check=False).returncode == 0, 5)
        a.run("systemctl start tinymq")
        assert a.show("ActiveState") == "active"
        wait_for(f"{data} at hostb", lambda: S.count(b, "mqin", f"data='{data}'") == 1, 20)
        # The other kind of user can still write and read.
        S.readme_insert(a, "hostb", data + "-other", user=other)
        wait_for(f"{data}-other at hostb",
                 lambda: S.count(b, "mqin", f"data='{data}-other'") == 1, 20)
    finally:
        holder.wait(10)
    assert holder.returncode == 0, holder.stderr.read()
    for line in _files(a):
        name, owner, mode = line.split()
        assert owner.endswith(":tinymq") and mode in ("660", "2660"), line
