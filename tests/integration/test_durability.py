"""Durability of what the receiver acknowledges, seen from outside with strace: a
database reached through symlinks is as durable as a plain one (the receiver syncs the
WAL that SQLite really writes, beside the file the links resolve to, before it
acknowledges), and a WAL removed under the daemon is never acknowledged."""

import os
import re
import shutil

import pytest

from tests.support import db as dbmod
from tests.support.checks import assert_exactly_once_in_order
from tests.support.daemon import Daemon
from tests.support.wait import wait_until
from tinymqd import protocol

STRACE = shutil.which("strace")
# Every system call the check needs: writes and syncs of files, datagrams sent.
TRACED = "pwrite64,pwritev,pwritev2,write,fdatasync,fsync,sendto,sendmsg"


class TracedDaemon(Daemon):
    """A daemon run under strace from its start: --seccomp-bpf stops it only at the
    traced calls; -y names the file behind each descriptor; -s shows whole datagrams."""

    def command(self, args=None, use_config=True):
        self.trace = self.dir / f"strace-{self.runs}.txt"
        return [STRACE, "-f", "--seccomp-bpf", "-y", "-s", "4096", "-e", f"trace={TRACED}",
                "-o", str(self.trace)] + super().command(args, use_config)

    def start(self, *args, **kwargs):
        super().start(*args, **kwargs)
        proc, strace_send = self.proc, self.proc.send_signal

        def send_signal(sig):  # strace does not pass signals on: send them to the daemon
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    os.kill(int(f.read().split()[0]), sig)
            except (OSError, IndexError, ValueError):
                strace_send(sig)

        proc.send_signal = send_signal
        return self


@pytest.fixture
def traced(make_daemon):
    """Factory: traced(name, **config) -> a TracedDaemon (not started)."""
    return lambda name, **config: make_daemon(name, daemon_class=TracedDaemon, **config)


def layout(tmp_path, kind):
    """(database path as configured, the file it resolves to) for each way of reaching
    the database through symlinks."""
    if kind == "file-link":  # /var/tmp/tinymqdb -> elsewhere/tinymq.db
        (tmp_path / "store").mkdir()
        os.symlink("store/tinymq.db", tmp_path / "tinymqdb")
        return tmp_path / "tinymqdb", tmp_path / "store" / "tinymq.db"
    if kind == "directory-link":  # /var/lib/tinymq -> /srv/tinymq
        (tmp_path / "srv").mkdir()
        os.symlink("srv", tmp_path / "lib")
        return tmp_path / "lib" / "tinymq.db", tmp_path / "srv" / "tinymq.db"
    # A relative file link inside a linked directory: resolved from the real directory.
    (tmp_path / "srv").mkdir()
    (tmp_path / "store").mkdir()
    os.symlink("srv", tmp_path / "lib")
    os.symlink("../store/tinymq.db", tmp_path / "srv" / "queue.db")
    return tmp_path / "lib" / "queue.db", tmp_path / "store" / "tinymq.db"


_LINE = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")
_FD = re.compile(r"^(\d+)<(.*?)>(?:,|\)| <unfinished)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_IOV = re.compile(r'iov_base="((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "\\": 92, '"': 34}


def unescape(text):
    """Bytes of a string as strace prints it (C escapes, \\xHH, octal)."""
    out, i = bytearray(), 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out += c.encode()
            i += 1
        elif text[i + 1] == "x":
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        elif text[i + 1] in "01234567":
            j = i + 1
            while j < len(text) and j < i + 4 and text[j] in "01234567":
                j += 1
            out.append(int(text[i + 1:j], 8))
            i = j
        else:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
    return bytes(out)


def durability_report(trace, wal, directory):
    """Walk the receiver's system calls in order. A WAL write counts once it returned; a
    sync covers the writes that had returned when it started, once it returns. Returns
    (syncs of the WAL that made more writes durable, acknowledgements of newly committed messages, those of
    them sent while a returned WAL write was not covered by a returned sync, whether the
    directory was synced before the first)."""
    writes = covered = syncs = 0
    dir_synced = dir_synced_before_first = False
    pending = {}  # pid -> (call, file, writes returned at its start)
    committed = {}
    acks, unsynced = [], []
    for line in trace.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue  # "+++ exited ..." and the like
        pid, resumed, rest, call, args = m.groups()
        if call:
            fd = _FD.match(args)
            file = fd.group(2) if fd else None
            if call in ("sendto", "sendmsg"):
                # sendmsg: the datagram is the iov_base, not the first string (an address)
                s = _IOV.search(args) or _STRING.search(args)
                try:
                    msg = protocol.decode(unescape(s.group(1))) if s else None
                except protocol.BadDatagram:
                    msg = None
                # A stream's first ack goes out as data arrives, before any commit: it
                # says how far the sender had got (its base).
                if isinstance(msg, protocol.Ack) and msg.committed > committed.setdefault(
                        msg.stream, msg.committed):
                    committed[msg.stream] = msg.committed
                    acks.append(msg.committed)
                    if covered < writes:
                        unsynced.append((msg.committed, writes - covered))
                    if len(acks) == 1:
                        dir_synced_before_first = dir_synced
            if args.endswith("<unfinished ...>"):
                pending[pid] = (call, file, writes)
                continue
            started = writes
        else:
            call, file, started = pending.pop(pid, (resumed, None, writes))
            args = rest
        result = args.rsplit(" = ", 1)
        if len(result) != 2 or not result[1].split()[0].lstrip("-").isdigit() or \
                int(result[1].split()[0]) < 0:
            continue  # failed, or no result
        if file == str(wal) and call.startswith(("pwrite", "write")):
            writes += 1
        elif file == str(wal) and call in ("fdatasync", "fsync"):
            syncs += started > covered  # only syncs that made more writes durable
            covered = max(covered, started)
        elif file == str(directory) and call in ("fdatasync", "fsync"):
            dir_synced = True
    return syncs, acks, unsynced, dir_synced_before_first


@pytest.mark.skipif(not STRACE, reason="needs strace (Debian package strace) to see which "
                    "files the receiver syncs before it acknowledges")
@pytest.mark.parametrize("kind", ["file-link", "directory-link", "link-in-linked-directory"])
def test_symlinked_database_syncs_the_real_wal_before_each_acknowledgement(
        start_daemon, traced, tmp_path, kind):
    path, real = layout(tmp_path, kind)
    a = start_daemon("a")
    b = traced("b", database=str(path)).start()
    n = 5
    for i in range(1, n + 1):  # one at a time: each one is its own commit and sync
        a.enqueue(b, "durable", f"durable-{i:06d}")
        wait_until(lambda: b.count("mqin") == i and a.count("mqout") == 0, 15,
                   f"message {i} stored by b and acknowledged to a",
                   describe=lambda: dbmod.describe_queues(a.db, path))
    wal = real.parent / (real.name + "-wal")
    # SQLite keeps the WAL beside the real file, never beside a link.
    assert wal.exists(), sorted(os.listdir(real.parent))
    beside_link = f"{path}-wal"
    assert os.path.realpath(beside_link) == str(wal) or not os.path.exists(beside_link)
    b.stop()
    syncs, acks, unsynced, dir_synced = durability_report(b.trace, wal, real.parent)
    assert len(acks) == n, f"acknowledgements of newly committed messages: {acks}"
    assert syncs >= n, f"{wal} synced new writes {syncs} times for {n} acknowledged messages"
    assert not unsynced, ("acknowledged while WAL writes were not synced "
                          f"(committed point, unsynced writes): {unsynced}")
    assert dir_synced, f"{real.parent} (where the WAL is) not synced before the first ack"
    assert_exactly_once_in_order(dbmod.series_numbers(path, "durable"), range(1, n + 1))


def test_a_wal_removed_under_the_receiver_is_never_acknowledged(start_daemon):
    """Deleting the WAL by hand leaves SQLite writing to a file no one will find at the
    next start: the receiver must stop without acknowledging, and the sender resend."""
    a, b = start_daemon("a"), start_daemon("b")
    a.enqueue(b, "gone", "gone-000001")
    wait_until(lambda: b.count("mqin") == 1 and a.count("mqout") == 0, 15,
               "first message delivered")
    os.unlink(f"{b.db}-wal")
    # Nothing may open b's database now: a new connection would make a new, empty WAL.
    a.enqueue(b, "gone", "gone-000002")
    rc = b.wait_exit(15)
    assert rc is not None, "b acknowledged or kept running with its WAL gone"
    assert rc != 0
    assert "Traceback" not in b.stderr_text(), b.stderr_text()
    assert a.count("mqout") == 1, "the message was acknowledged though not durable"
    b.start()
    wait_until(lambda: a.count("mqout") == 0, 15, "resent and acknowledged after restart",
               describe=lambda: dbmod.describe_queues(a.db, b.db))
    assert_exactly_once_in_order(dbmod.series_numbers(b.db, "gone"), [1, 2])
    a.stop()
    b.stop()


@pytest.mark.skipif(not STRACE, reason="needs strace (Debian package strace)")
def test_strace_names_the_files_the_check_looks_for(traced):
    """The check itself: strace names the file behind each descriptor, as the parser
    reads it (else the test above could pass by seeing nothing)."""
    d = traced("probe").start()
    d.stop()
    text = d.trace.read_text()
    assert re.search(rf"^\d+ +write\(2<{re.escape(str(d.stderr_path))}>, ", text, re.M), \
        text[-2000:]
