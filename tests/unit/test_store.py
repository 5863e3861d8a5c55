"""The database: tables created as promised, also in an empty or older file."""

import sqlite3
import subprocess

import pytest

from tinymqd import store


def columns(path, table):
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_creates_tables_in_wal_mode_and_keeps_the_node_identity(tmp_path):
    path = str(tmp_path / "q.db")
    node = store.initialize(path).node
    assert node > 0 and store.initialize(path).node == node
    for name in ("x", "ts", "host", "port", "token", "data", "last_error"):
        assert name in columns(path, "mqout")
    for name in ("x", "ts", "shost", "sport", "token", "data"):
        assert name in columns(path, "mqin")
    mode = subprocess.run(["sqlite3", path, "PRAGMA journal_mode;"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert mode == "wal"


def test_existing_empty_file_works(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    store.initialize(str(path))
    assert "host" in columns(str(path), "mqout")


def test_readme_insert_works_literally_with_port_as_string(tmp_path):
    path = str(tmp_path / "q.db")
    store.initialize(path)
    subprocess.run(["sqlite3", path, "INSERT into mqout (host,port,token,data) VALUES "
                    "('MachineB','9000','token','HelloMachineBFromMachineA');"], check=True)
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT host, port, typeof(port), token, data, last_error, "
                           "ts IS NOT NULL FROM mqout").fetchone()
    assert row == ("MachineB", 9000, "integer", "token", "HelloMachineBFromMachineA", None, 1)


def test_autoincrement_never_reuses_ids(tmp_path):
    path = str(tmp_path / "q.db")
    store.initialize(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO mqout (host, data) VALUES ('a', 'one')")
        conn.execute("DELETE FROM mqout")
        conn.execute("INSERT INTO mqout (host, data) VALUES ('a', 'two')")
        assert conn.execute("SELECT x FROM mqout").fetchone()[0] == 2


def test_older_table_gets_the_daemon_columns(tmp_path):
    path = str(tmp_path / "q.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE mqout (x INTEGER PRIMARY KEY AUTOINCREMENT, ts, host, "
                     "port, token, data)")
        conn.execute("INSERT INTO mqout (host, data) VALUES ('h', 'kept')")
    store.initialize(path)
    assert {"last_error", "stream", "seq"} <= set(columns(path, "mqout"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT data FROM mqout").fetchone() == ("kept",)


def test_foreign_table_layout_is_a_clear_error(tmp_path):
    path = str(tmp_path / "other.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE mqout (x INTEGER PRIMARY KEY, recipient, body)")
    with pytest.raises(store.StoreError, match="mqout has no column token, data"):
        store.initialize(path)


def test_unwritable_location_is_a_clear_error(tmp_path):
    with pytest.raises(store.StoreError, match="database .*nope"):
        store.initialize(str(tmp_path / "nope" / "q.db"))
