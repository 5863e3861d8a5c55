"""A damaged database file stops tinymqd for good, with one line that names the file and
how to recover it, and an exit status on which systemd does not restart it in a loop
(tinymq.service: RestartPreventExitStatus=). Real files, damaged with Python the way a
disk or a careless copy damages them."""

import os
import subprocess

from tests.support import db as dbmod
from tests.support.wait import wait_until
from tinymqd import store

EX_DATAERR = 65  # sysexits.h; what the unit lists in RestartPreventExitStatus=


def cli(db, sql):
    out = subprocess.run([dbmod.SQLITE3, str(db), sql], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return out.stdout.strip()


def overwrite_page(db, pgno):
    """Garbage over one page of the database file (0xA5 is no b-tree page type)."""
    size = int(cli(db, "PRAGMA page_size"))
    with open(db, "r+b") as f:
        f.seek((pgno - 1) * size)
        f.write(b"\xa5" * size)


def settled(db):
    """Everything in the database file itself: no WAL left to hide a damaged page."""
    cli(db, "PRAGMA wal_checkpoint(TRUNCATE)")
    wal = f"{db}-wal"
    assert not os.path.exists(wal) or os.path.getsize(wal) == 0, f"{wal} not empty"


def problem_lines(text):
    return [line for line in text.splitlines()
            if any(level in line for level in (" WARNING", " ERROR", " CRITICAL", "error:"))]


def test_damaged_page_met_by_the_writer_stops_with_one_line_and_no_restart_loop(start_daemon):
    a, b = start_daemon("a"), start_daemon("b")
    for i in range(1, 4):
        a.enqueue(b, "before", f"before-{i:06d}")
    wait_until(lambda: b.count("mqin") == 3 and a.count("mqout") == 0, 15, "delivered")
    b.stop()
    settled(b.db)
    root = int(cli(b.db, "SELECT rootpage FROM sqlite_schema WHERE name = 'mqin'"))
    overwrite_page(b.db, root)
    bad = subprocess.run([dbmod.SQLITE3, str(b.db), "SELECT count(*) FROM mqin"],
                         capture_output=True, text=True, timeout=30)
    assert "malformed" in bad.stderr, bad  # the damage is real

    b.start()  # start-up does not read mqin: the writer meets the damage first
    a.enqueue(b, "after", "after-000001")
    rc = b.wait_exit(15)
    err = b.stderr_text()
    assert rc == EX_DATAERR, f"exit status {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = problem_lines(err)
    assert len(lines) == 1, f"expected one line about the damage:\n{err}"
    assert str(b.db) in lines[0] and "malformed" in lines[0], lines[0]
    assert f"sqlite3 {b.db} .recover | sqlite3 " in lines[0], lines[0]
    assert a.count("mqout") == 1, "the message was acknowledged, though never stored"


def test_database_that_is_no_database_at_start_gets_the_same_exit_status(make_daemon):
    b = make_daemon("b")
    b.start()
    b.stop()
    settled(b.db)
    overwrite_page(b.db, 1)  # the header: SQLite no longer knows the file
    b.start(wait=False)
    rc = b.wait_exit(15)
    err = b.stderr_text()
    assert rc == EX_DATAERR, err
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if ".recover" in line and str(b.db) in line], err


def test_the_advice_is_one_line_naming_the_file_and_the_recovery(tmp_path):
    path = tmp_path / "q.db"
    e = store.DatabaseDamaged(str(path), "database disk image is malformed")
    text = str(e)
    assert "\n" not in text and e.exit_status == EX_DATAERR
    assert f"sqlite3 {path} .recover | sqlite3 {path}.recovered" in text, text
