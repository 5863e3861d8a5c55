"""Numbering rows, on real SQLite files: streams per run, identity bound to the file, rows
changed after INSERT, and a database tinymq.pl made."""

import contextlib
import shutil
import sqlite3

import pytest

from tinymqd import store


def connect(path):
    """A connection closed at the end of the with block (the WAL is then checkpointed)."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def rows(path):
    with connect(path) as conn:
        return conn.execute("SELECT x, stream, seq, last_error FROM mqout ORDER BY x").fetchall()


def streams(path):
    with connect(path) as conn:
        return conn.execute("SELECT id, host, port, next_seq, open FROM tinymq_streams "
                            "ORDER BY opened").fetchall()


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "q.db")
    store.initialize(path, new_run=True)
    return path


def insert(path, host="hostB", port=9000, data="m"):
    with connect(path) as conn:
        return conn.execute("INSERT INTO mqout (host, port, data) VALUES (?, ?, ?)",
                            (host, port, data)).lastrowid


def test_rows_of_one_destination_are_numbered_in_x_order_in_one_random_stream(db):
    for _ in range(3):
        insert(db)
    insert(db, "hostC")
    numbered = rows(db)
    assert [r[2] for r in numbered] == [1, 2, 3, 1]
    assert numbered[0][1] == numbered[2][1] != numbered[3][1]
    assert all(r[1] > 1 << 20 for r in numbered)  # random 63-bit ids, not 1, 2, 3


def test_every_run_numbers_new_rows_in_a_new_stream(db):
    insert(db)
    first = rows(db)[0][1]
    store.initialize(db, new_run=True)
    insert(db)
    second = rows(db)[1][1]
    assert second != first and rows(db)[1][2] == 1
    assert [s[4] for s in streams(db)] == [None, 1]  # the old stream is closed
    with connect(db) as conn:
        conn.execute("DELETE FROM mqout WHERE stream = ?", (first,))
    store.initialize(db, new_run=True)  # a closed stream without rows is forgotten
    assert [s[0] for s in streams(db)] == [second]


def test_a_copied_database_takes_a_new_node_and_keeps_the_old_one_for_its_rows(db, tmp_path):
    node = store.initialize(db).node
    insert(db)
    copy = str(tmp_path / "copy.db")
    shutil.copy(db, copy)
    again = store.initialize(db, new_run=True)
    assert again == (node, None)  # the same file: the same node
    moved = store.initialize(copy, new_run=True)
    assert moved.node != node and moved.previous == node
    with connect(copy) as conn:
        assert conn.execute("SELECT node FROM tinymq_streams").fetchall() == [(node,)]
        conn.execute("INSERT INTO mqout (host, data) VALUES ('hostB', 'new')")
        assert conn.execute("SELECT node FROM tinymq_streams WHERE open").fetchall() == [
            (moved.node,)]


def test_an_update_that_does_not_change_the_destination_changes_nothing(db):
    for _ in range(3):
        insert(db)
    before = rows(db)
    with connect(db) as conn:
        conn.execute("UPDATE mqout SET port = 9000, host = 'hostB' WHERE x = 1")
        conn.execute("UPDATE mqout SET host = ' hostB ' WHERE x = 2")
        assert conn.execute("SELECT count(*) FROM tinymq_moved").fetchone() == (0,)
    assert rows(db) == before


def test_changing_the_destination_renumbers_clears_last_error_and_notes_the_move(db):
    x = insert(db, "hostTypo")
    insert(db, "hostB")
    with connect(db) as conn:
        conn.execute("UPDATE mqout SET last_error = 'no answer' WHERE x = ?", (x,))
        conn.execute("UPDATE mqout SET host = 'hostB' WHERE x = ?", (x,))
        moved = conn.execute("SELECT stream, seq FROM tinymq_moved").fetchall()
    (_, stream, seq, error), (_, other_stream, other_seq, _) = rows(db)
    assert stream == other_stream and (other_seq, seq) == (1, 2) and error is None
    assert moved == [(stream, seq)]


def test_unusable_rows_stay_unnumbered_until_fixed(db):
    x = insert(db, "hostB", 0)
    assert rows(db)[0][1:3] == (None, None)
    with connect(db) as conn:
        conn.execute("UPDATE mqout SET port = 9001 WHERE x = ?", (x,))
    assert rows(db)[0][2] == 1


def test_an_older_tinymqd_database_keeps_its_rows_and_opens_new_streams(tmp_path):
    path = str(tmp_path / "old.db")
    with connect(path) as conn:
        conn.executescript("""
            CREATE TABLE mqout (x INTEGER PRIMARY KEY AUTOINCREMENT, ts, host TEXT,
                port INTEGER DEFAULT 9000, token TEXT, data, last_error TEXT,
                stream INTEGER, seq INTEGER);
            CREATE TABLE tinymq_streams (id INTEGER PRIMARY KEY, host TEXT NOT NULL,
                port INTEGER NOT NULL, next_seq INTEGER NOT NULL, UNIQUE (host, port));
            INSERT INTO tinymq_streams VALUES (1, 'hostB', 9000, 3);
            INSERT INTO mqout (host, port, data, stream, seq) VALUES ('hostB', 9000, 'a', 1, 2);
        """)
    store.initialize(path, new_run=True)
    insert(path)
    assert [(s[0], s[3], s[4]) for s in streams(path)][0] == (1, 3, None)
    assert rows(path)[0][1:3] == (1, 2) and rows(path)[1][2] == 1


PERL_SCHEMA = """
CREATE TABLE mqout (x INTEGER PRIMARY KEY, ts, shost, sport, dhost, dport, token, data,
                    seq, backoff, magic UNIQUE);
CREATE TABLE mqin (x INTEGER PRIMARY KEY AUTOINCREMENT, ts, shost, sport, dhost, dport,
                   token, data, seq, magic UNIQUE);
"""


def test_a_tinymq_pl_database_is_taken_over(tmp_path):
    path = str(tmp_path / "perl.db")
    with connect(path) as conn:
        conn.executescript(PERL_SCHEMA)
        conn.execute("INSERT INTO mqout (dhost, dport, token, data, seq, magic) "
                     "VALUES ('hostB', '9001', 't', 'queued by tinymq.pl', 17, 'm1')")
    store.initialize(path, new_run=True)
    assert rows(path) == [(1, None, None, None)]  # numbered afresh by the scheduler
    with connect(path) as conn:
        triggers = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert "tinymq_number_new" not in triggers  # old rows first, in x order
        store.numbering.create_numbering_triggers(conn)
        conn.execute("INSERT INTO mqout (dhost, dport, token, data) "
                     "VALUES ('hostB', '9001', 't', 'tinymq.pl style')")
        conn.execute("INSERT INTO mqout (host, port, token, data) "
                     "VALUES ('hostB', 9001, 't', 'README style')")
        conn.execute("INSERT INTO mqout (dhost, token, data) VALUES ('hostB', 't', 'p')")
        got = conn.execute("SELECT s.host, s.port, m.seq FROM mqout AS m JOIN "
                           "tinymq_streams AS s ON s.id = m.stream ORDER BY m.x").fetchall()
    assert got == [("hostB", 9001, 1), ("hostB", 9001, 2), ("hostB", 9000, 1)]
