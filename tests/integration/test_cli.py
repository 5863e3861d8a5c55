"""Command line and start-up: --version, --check-config, config errors (exit 78, one line),
positional PORT DATABASE, port in use, unwritable database, existing empty database."""

import shutil
import socket
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.support import db as dbmod
from tests.support.checks import assert_series_delivered
from tests.support.daemon import REPO, run_tinymqd
from tests.support.ports import free_udp_port
from tests.support.wait import wait_until

EX_CONFIG = 78


def version():
    ns = {}
    exec((REPO / "tinymqd" / "__init__.py").read_text(), ns)
    return ns["__version__"]


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def write_yaml(path, mapping):
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


def good_config(tmp_path, **changes):
    cfg = {"port": free_udp_port(), "bind": "127.0.0.1", "database": str(tmp_path / "t.db"),
           "log_level": "info"}
    cfg.update(changes)
    return cfg


def run_bad(args, timeout=10):
    """Run tinymqd that must fail fast; a daemon that starts instead is a failure, not a hang."""
    try:
        return run_tinymqd(args, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tinymqd {' '.join(map(str, args))} still running after {timeout} s "
                    "(it should have refused to start)")


def assert_one_clean_line(proc, *must_contain):
    err = proc.stderr
    assert "Traceback" not in err, f"traceback on stderr:\n{err}"
    assert len(lines(err)) == 1, f"expected exactly one line on stderr, got:\n{err}"
    for needle in must_contain:
        assert str(needle) in err, f"{needle!r} not named in stderr: {err!r}"


# -- --version ------------------------------------------------------------------------
def test_version():
    proc = run_tinymqd(["--version"])
    assert proc.returncode == 0, proc.stderr
    assert version() in proc.stdout, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


# -- --check-config ---------------------------------------------------------------------
def test_check_config_accepts_a_good_file_and_starts_nothing(tmp_path):
    cfg = good_config(tmp_path, retry_max=0.5, max_datagram=1200, max_message=1 << 20)
    path = write_yaml(tmp_path / "good.yaml", cfg)
    proc = run_tinymqd(["--check-config", "--config", path])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not Path(cfg["database"]).exists(), "--check-config must not create the database"
    # and it did not bind the port: we can
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", cfg["port"]))


def test_check_config_with_short_option(tmp_path):
    path = write_yaml(tmp_path / "good.yaml", good_config(tmp_path))
    proc = run_tinymqd(["-c", path, "--check-config"])
    assert proc.returncode == 0, proc.stderr


def test_check_config_says_which_key_is_given_twice_and_accepts_the_last(tmp_path):
    """The administrator appended an override: valid (it starts after an upgrade, as
    before), and --check-config says so in one line on stderr."""
    path = write_yaml(tmp_path / "good.yaml", good_config(tmp_path))
    with open(path, "a") as f:
        f.write("\n# edited by the administrator\nlog_level: debug\n")
    proc = run_tinymqd(["-c", path, "--check-config"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "'log_level' is given again" in proc.stderr


# -- --create-db ------------------------------------------------------------------------
def test_create_db_makes_the_tables_so_the_readme_insert_works_before_the_daemon_ran(tmp_path):
    path = write_yaml(tmp_path / "good.yaml", good_config(tmp_path))
    db = tmp_path / "t.db"
    proc = run_tinymqd(["--create-db", "--config", path])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    insert = subprocess.run(
        ["sqlite3", str(db), "INSERT into mqout (host,port,token,data) "
                             "VALUES ('127.0.0.1','9000','token','early');"],
        capture_output=True, text=True, timeout=30)
    assert insert.returncode == 0 and not insert.stderr, insert.stderr
    # The row is numbered on insert: the daemon's triggers are there too.
    assert dbmod.query(db, "SELECT data, seq FROM mqout") == [("early", 1)]
    assert run_tinymqd(["--create-db", "--config", path]).returncode == 0  # idempotent
    assert dbmod.query(db, "SELECT count(*) FROM mqout") == [(1,)]


def test_create_db_that_cannot_be_made_is_one_clear_line(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "t.db"
    proc = run_bad(["--create-db", "9000", str(missing)])
    assert proc.returncode not in (0, EX_CONFIG)
    assert_one_clean_line(proc, missing)


BAD_CONFIGS = [
    # id, change to a good config (None value = delete key), key that must be named
    ("unknown-key", {"prot": 9000}, "prot"),
    ("unknown-key-typo-log", {"loglevel": "info"}, "loglevel"),
    ("port-string", {"port": "abc"}, "port"),
    ("port-bool", {"port": True}, "port"),
    ("port-float", {"port": 9000.5}, "port"),
    ("port-zero", {"port": 0}, "port"),
    ("port-70000", {"port": 70000}, "port"),
    ("port-negative", {"port": -1}, "port"),
    ("log-level-bad", {"log_level": "verbose"}, "log_level"),
    ("log-level-int", {"log_level": 5}, "log_level"),
    ("retry-max-string", {"retry_max": "fast"}, "retry_max"),
    ("max-datagram-string", {"max_datagram": "big"}, "max_datagram"),
    ("max-message-list", {"max_message": [1, 2]}, "max_message"),
    ("bind-int", {"bind": 123}, "bind"),
    ("database-list", {"database": ["a", "b"]}, "database"),
]


@pytest.mark.parametrize("mode", ["run", "check"])
@pytest.mark.parametrize("case,change,key", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exits_78_with_one_line_naming_file_and_key(tmp_path, mode, case, change, key):
    cfg = good_config(tmp_path)
    cfg.update(change)
    path = write_yaml(tmp_path / "bad.yaml", cfg)
    args = ["--config", path] + (["--check-config"] if mode == "check" else [])
    proc = run_bad(args)
    assert proc.returncode == EX_CONFIG, f"exit {proc.returncode}, stderr: {proc.stderr!r}"
    assert_one_clean_line(proc, path, key)
    assert not Path(cfg["database"] if isinstance(cfg["database"], str) else "/nonexistent").exists()


@pytest.mark.parametrize("mode", ["run", "check"])
@pytest.mark.parametrize("text", [
    "port: [9000\nbind: 127.0.0.1\n",           # YAML syntax error
    "port: 9000\n  bind: : :\n",                 # bad indentation
    "- port\n- 9000\n",                          # not a mapping
    "just a string\n",                           # not a mapping
], ids=["unclosed-bracket", "bad-indent", "list", "scalar"])
def test_unparsable_config_exits_78_with_one_line_naming_file(tmp_path, mode, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    proc = run_bad(["--config", path] + (["--check-config"] if mode == "check" else []))
    assert proc.returncode == EX_CONFIG, f"exit {proc.returncode}, stderr: {proc.stderr!r}"
    assert_one_clean_line(proc, path)


def test_missing_config_file_is_one_clear_line(tmp_path):
    path = tmp_path / "nope.yaml"
    proc = run_bad(["--config", path])
    assert proc.returncode != 0
    assert_one_clean_line(proc, path)


# -- positional PORT DATABASE -------------------------------------------------------------
def test_positional_port_and_database_override_config(make_daemon, start_daemon, tmp_path):
    a = start_daemon("a")
    b = make_daemon("b")  # its config names b.port / b.db; the positional ones must win
    port2, db2 = free_udp_port(), tmp_path / "positional.db"
    b.start(args=[port2, db2])
    a.enqueue(port2, "pos", "to the positional port")
    wait_until(lambda: dbmod.count(db2, "mqin", "token='pos'") == 1, 10,
               "message to the positional PORT lands in the positional DATABASE",
               describe=lambda: dbmod.describe_queues(a.db, db2))
    assert not b.db.exists(), "the config's database must not be used"
    b.stop()


def test_positional_port_alone_keeps_config_database(make_daemon, start_daemon):
    a = start_daemon("a")
    b = make_daemon("b")
    port2 = free_udp_port()
    b.start(args=[port2])
    a.enqueue(port2, "pos", "x")
    wait_until(lambda: b.count("mqin", "token='pos'") == 1, 10, "arrives in the config's db")
    b.stop()


def test_perl_style_command_line_without_config(make_daemon, tmp_path):
    """`tinymqd PORT DATABASE` like `perl tinymq.pl 9000 /var/tmp/tinymqdb`."""
    a, b = make_daemon("a"), make_daemon("b")
    a.start(args=[a.port, a.db], use_config=False)
    b.start(args=[b.port, b.db], use_config=False)
    a.enqueue(b, "token", "HelloMachineBFromMachineA", literal=True)
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered",
               describe=lambda: dbmod.describe_queues(a.db, b.db))
    assert b.query("SELECT token, data FROM mqin") == [("token", "HelloMachineBFromMachineA")]
    a.stop()
    b.stop()


# -- other start-up failures ----------------------------------------------------------------
def assert_clean_startup_failure(d, *must_contain, timeout=10):
    rc = d.wait_exit(timeout)
    assert rc is not None, f"{d.name} kept running; stderr:\n{d.stderr_tail()}"
    err = d.stderr_text()
    assert rc != 0, f"exit code 0 on a failed start; stderr:\n{err}"
    assert "Traceback" not in err, f"traceback on stderr:\n{err}"
    assert lines(err), "no error line on stderr"
    assert d.notify.find("READY", "1", since=d.notify_mark) is None, "READY=1 sent on failure"
    last = lines(err)[-1]
    for needle in must_contain:
        assert str(needle) in err, f"{needle!r} not named in stderr:\n{err}"
    return last


def test_port_in_use_by_another_socket(make_daemon):
    d = make_daemon("a")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", d.port))
        d.start(wait=False)
        assert_clean_startup_failure(d, d.port)


def test_port_in_use_by_another_tinymqd(start_daemon, make_daemon, tmp_path):
    first = start_daemon("first")
    second = make_daemon("second", port=first.port)
    second.start(wait=False)
    assert_clean_startup_failure(second, first.port)
    first.assert_alive()
    first.stop()


def test_database_served_by_another_tinymqd(start_daemon, make_daemon):
    """Two daemons on one database would both send its rows; the second is refused."""
    first = start_daemon("first")
    first.enqueue(9, "t", "waiting for a peer")  # its queue must stay as it is
    second = make_daemon("second", database=str(first.db))
    second.start(wait=False)
    assert_clean_startup_failure(second, first.db, "another tinymqd")
    first.assert_alive()
    assert first.count("mqout") == 1
    first.stop()
    second.start()  # the first has gone: the database is free again
    second.stop()


@pytest.fixture
def world_dir():
    """A directory another uid can read (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tmq-nobody-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_database_in_unwritable_directory(make_daemon, world_dir):
    locked = world_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    d = make_daemon("a", database=str(locked / "tinymq.db"))
    d.dir = world_dir
    d.config_path = world_dir / "tinymq.yaml"
    d.write_config()
    d.config_path.chmod(0o644)
    # nobody may not be able to read the checkout (e.g. under root's 0700 home): give it
    # a world-readable copy of the code.
    code = world_dir / "code"
    shutil.copytree(REPO / "tinymqd", code / "tinymqd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in [code, *code.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    d.start(wait=False, user=65534, group=65534, extra_groups=[], env={"PYTHONPATH": str(code)})
    assert_clean_startup_failure(d, locked / "tinymq.db")


@pytest.mark.parametrize("kind", ["parent-is-a-file", "path-is-a-directory", "no-such-directory"])
def test_database_path_unusable(make_daemon, tmp_path, kind):
    if kind == "parent-is-a-file":
        (tmp_path / "afile").write_text("x")
        path = tmp_path / "afile" / "tinymq.db"
    elif kind == "path-is-a-directory":
        path = tmp_path / "adir"
        path.mkdir()
    else:
        path = tmp_path / "missing" / "deeper" / "tinymq.db"
    d = make_daemon("a", database=str(path))
    d.start(wait=False)
    if kind == "no-such-directory":
        # creating the directory is acceptable; failing clearly is too
        got = d.notify.wait_for("READY", "1", since=d.notify_mark, timeout=10,
                                alive=lambda: d.proc.poll() is None)
        if got is not None:
            d.stop()
            assert path.exists()
            return
    assert_clean_startup_failure(d, path)


# -- databases that exist already ---------------------------------------------------------
def test_existing_empty_database_file_works(make_daemon, start_daemon):
    b = start_daemon("b")
    a = make_daemon("a")
    a.db.write_bytes(b"")
    a.start()
    assert {"mqout", "mqin"} <= dbmod.tables(a.db)
    a.enqueue(b, "t", "from an empty file")
    wait_until(lambda: b.count("mqin") == 1, 10, "delivered")
    a.stop()


def test_existing_database_with_application_tables_is_kept(make_daemon):
    a = make_daemon("a")
    con = sqlite3.connect(a.db)
    con.execute("CREATE TABLE app(k TEXT, v TEXT)")
    con.execute("INSERT INTO app VALUES ('keep', 'me')")
    con.commit()
    con.close()
    a.start()
    assert a.query("SELECT * FROM app") == [("keep", "me")]
    assert {"mqout", "mqin"} <= dbmod.tables(a.db)
    a.stop()


def test_rows_queued_before_tinymqd_first_ran_go_first_in_order(make_daemon, start_daemon):
    """A database an application (or the old Perl tinymq) filled before tinymqd ever ran:
    its rows are delivered, and rows inserted after start follow them, in x order."""
    b = start_daemon("b")
    a = make_daemon("a")
    dbmod.make_app_database(a.db)
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "legacy", 3000)
    dbmod.sqlite_cli(a.db, "INSERT INTO mqout (host, port, token, data) VALUES ('', 1, 'bad', 'x');")
    a.start()
    dbmod.enqueue_series(a.db, "127.0.0.1", b.port, "legacy", 1000, start=3001)
    assert_series_delivered(a, b, "legacy", 4000, 60)
    wait_until(lambda: a.query("SELECT token, last_error IS NOT NULL FROM mqout") == [("bad", 1)],
               10, "the bad row kept, with last_error")
    a.stop()


def test_killed_while_numbering_rows_from_before_tinymqd_loses_no_order(make_daemon):
    """SIGKILL while the old rows are being numbered, rows added while it is down: after
    the restart every row arrives once, in x order."""
    a, b = make_daemon("a"), make_daemon("b")
    dbmod.make_app_database(a.db)
    b_port = b.port  # b is not running yet: a can only number, not deliver
    dbmod.enqueue_series(a.db, "127.0.0.1", b_port, "legacy", 20000)
    a.start()
    wait_until(lambda: a.count("mqout", "seq IS NOT NULL") > 0, 10, "numbering under way")
    a.kill()
    numbered = a.count("mqout", "seq IS NOT NULL")
    assert 0 < numbered < 20000, f"{numbered} numbered: not killed mid-way"
    dbmod.enqueue_series(a.db, "127.0.0.1", b_port, "legacy", 1000, start=20001)
    a.start()
    b.start()
    dbmod.enqueue_series(a.db, "127.0.0.1", b_port, "legacy", 1000, start=21001)
    assert_series_delivered(a, b, "legacy", 22000, 90)
    a.stop()
    b.stop()


def test_schema_and_wal(start_daemon):
    a = start_daemon("a")
    assert dbmod.scalar(a.db, "PRAGMA journal_mode") == "wal"
    out_cols = dbmod.columns(a.db, "mqout")
    in_cols = dbmod.columns(a.db, "mqin")
    for col in ("x", "ts", "host", "port", "token", "data", "last_error"):
        assert col in out_cols, f"mqout lacks {col}: {out_cols}"
    for col in ("x", "ts", "shost", "sport", "token", "data"):
        assert col in in_cols, f"mqin lacks {col}: {in_cols}"
    sql = dbmod.scalar(a.db, "SELECT sql FROM sqlite_master WHERE name='mqout'")
    assert "AUTOINCREMENT" in sql.upper(), f"mqout.x must never be reused: {sql}"
    others = dbmod.tables(a.db) - {"mqout", "mqin", "sqlite_sequence"}
    assert all(t.startswith("tinymq_") for t in others), f"private tables not prefixed: {others}"
    a.stop()


def test_start_line_names_version_address_port_database(start_daemon):
    a = start_daemon("a")
    text = a.stderr_text()
    hits = [line for line in text.splitlines()
            if version() in line and str(a.port) in line and str(a.db) in line]
    assert hits, f"no start line with version {version()}, port {a.port} and {a.db}:\n{text}"
    a.stop()
