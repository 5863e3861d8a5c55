"""Config: defaults, overrides, and one readable error naming the key."""

import os
import re

import pytest

from tinymqd import config


def write(tmp_path, text):
    path = tmp_path / "tinymq.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_match_the_spec(tmp_path):
    cfg = config.load(write(tmp_path, ""))
    assert (cfg.port, cfg.bind, cfg.database, cfg.log_level) == (
        9000, "::", "/var/lib/tinymq/tinymq.db", "info")


def test_positional_arguments_override_the_file(tmp_path):
    cfg = config.load(write(tmp_path, "port: 9100\ndatabase: /x.db\n"), "9200", "/y.db")
    assert (cfg.port, cfg.database) == (9200, "/y.db")


def test_shipped_config_is_valid_and_equals_the_defaults():
    shipped = config.load("etc/tinymq.yaml")
    defaults = config.validate({}, "x")
    for field in ("port", "bind", "database", "log_level", "retry_max", "max_datagram",
                  "max_message"):
        assert getattr(shipped, field) == getattr(defaults, field)


@pytest.mark.parametrize("text, key, problem", [
    ("prot: 9000\n", "prot", "unknown key"),
    ("port: '9000'\n", "port", "must be an integer"),
    ("port: 70000\n", "port", "between 1 and 65535"),
    ("port: 0\n", "port", "between 1 and 65535"),
    ("port: yes\n", "port", "must be an integer"),
    ("bind: localhost\n", "bind", "IPv4 or IPv6 address"),
    ("log_level: verbose\n", "log_level", "debug, info, warning, error"),
    ("database: ''\n", "database", "must not be empty"),
    ('database: "/var/lib/a\\0b"\n', "database", "NUL"),
    ("retry_max: 0\n", "retry_max", "between"),
    ("max_datagram: 100\n", "max_datagram", "between"),
])
def test_bad_values_name_file_key_and_problem(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    message = str(e.value)
    assert path in message and f"'{key}'" in message and problem in message
    assert "\n" not in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "port: 9000\nbind: [oops\n")
    with pytest.raises(config.ConfigError, match=r"YAML syntax error at line \d+"):
        config.load(path)


def test_a_key_given_twice_counts_the_last_time_and_is_said(tmp_path):
    """An admin who appends an override gets it, and a line that says so (not silence,
    and not a daemon that no longer starts after an upgrade)."""
    path = write(tmp_path, "port: 9000\nlog_level: info\nport: 9001\n")
    cfg = config.load(path)
    assert cfg.port == 9001
    assert len(cfg.notes) == 1 and path in cfg.notes[0]
    assert "'port' is given again at line 3" in cfg.notes[0]


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "peers:\n  ? {a: 1}\n  : k\n"])
def test_a_key_that_is_a_list_or_mapping_is_an_error_not_a_traceback(tmp_path, text):
    with pytest.raises(config.ConfigError, match="is not a name"):
        config.load(write(tmp_path, text))


@pytest.mark.parametrize("text, problem", [
    # 'billion laughs': 400 bytes that stand for gigabytes once an error message shows them
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
     + "allow: *i\n", "aliases (*name) are not allowed"),
    ("allow: " + "[" * 500 + "]" * 500 + "\n", "nested too deeply"),
    ("<<: {port: 9001}\n", "merge keys (<<) are not allowed"),
])
def test_a_config_yaml_cannot_blow_up_is_refused_in_one_line(tmp_path, text, problem):
    with pytest.raises(config.ConfigError, match=re.escape(problem)) as e:
        config.load(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_a_config_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # open() would wait for a writer for ever
    with pytest.raises(config.ConfigError, match="not a regular file"):
        config.load(str(fifo))
    with pytest.raises(config.ConfigError, match="not a regular file"):
        config.load(str(tmp_path))


def test_not_a_mapping(tmp_path):
    with pytest.raises(config.ConfigError, match="mapping"):
        config.load(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "nope.yaml"))


def test_bad_port_argument_names_the_command_line(tmp_path):
    with pytest.raises(config.ConfigError, match="command line.*port"):
        config.load(write(tmp_path, ""), "99999")


KEY_A = "A" * 43 + "="  # base64 of 32 bytes
KEY_B = "B" * 43 + "="


def key_file(tmp_path, text=f"alpha: {KEY_A}\nbeta: {KEY_B}\n", mode=0o640):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_keys_and_peers_are_read_and_require_key_defaults_to_true(tmp_path):
    keys = key_file(tmp_path)
    cfg = config.load(write(tmp_path, f"key_file: {keys}\npeers:\n  hostB: alpha\n"
                                      f"  '10.0.0.0/8': [beta, alpha]\n  '*': beta\n"
                                      f"allow: ['10.0.0.0/8', '::1']\n"))
    assert cfg.keys_required and set(cfg.keys) == {"alpha", "beta"}
    assert cfg.peers == {"hostB": ["alpha"], "10.0.0.0/8": ["beta", "alpha"], "*": ["beta"]}
    assert [str(n) for n in cfg.allow] == ["10.0.0.0/8", "::1/128"]
    assert KEY_A[:20] not in repr(cfg) and "keys=" not in repr(cfg)  # keys never in logs
    assert not config.load(write(tmp_path, f"key_file: {keys}\nrequire_key: false\n")
                           ).keys_required


@pytest.mark.parametrize("mode, problem", [
    (0o644, "readable by others"), (0o660, "writable by group or others"),
    (0o602, "writable by group or others"),
])
def test_a_key_file_others_may_read_or_anyone_but_its_owner_may_change_is_refused(
        tmp_path, mode, problem):
    keys = key_file(tmp_path, mode=mode)
    with pytest.raises(config.ConfigError, match=problem) as e:
        config.load(write(tmp_path, f"key_file: {keys}\n"))
    assert keys in str(e.value) and "key_file" in str(e.value)


@pytest.mark.parametrize("text, problem", [
    ("short: AAAA\n", "is 3 bytes, must be 32"),
    ("bad: '!!!'\n", "not base64"),
    ("[a, b]\n", "must be a mapping"),
    ("", "must be a mapping"),
])
def test_bad_keys_are_refused_naming_the_file(tmp_path, text, problem):
    keys = key_file(tmp_path, text)
    with pytest.raises(config.ConfigError, match=problem) as e:
        config.load(write(tmp_path, f"key_file: {keys}\n"))
    assert keys in str(e.value)


@pytest.mark.parametrize("text, problem", [
    ("peers:\n  hostB: gamma\n", "names key 'gamma'"),
    ("peers:\n  hostB: []\n", "must name a key"),
    ("peers:\n  'not a host!': alpha\n", "not a host name"),
    ("allow: ['10.0.0.0/33']\n", "list of networks"),
    ("allow: 10.0.0.0/8\n", "must be a list"),
    ("require_key: 1\n", "true or false"),
])
def test_bad_peers_allow_and_require_key_name_the_key(tmp_path, text, problem):
    keys = key_file(tmp_path)
    path = write(tmp_path, f"key_file: {keys}\n{text}")
    with pytest.raises(config.ConfigError, match=problem) as e:
        config.load(path)
    assert path in str(e.value)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_key_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "keys"
    os.mkdir(path, 0o750) if kind == "directory" else os.mkfifo(path, 0o640)
    with pytest.raises(config.ConfigError, match="not a regular file") as e:
        config.load(write(tmp_path, f"key_file: {path}\npeers: {{'*': a}}\n"))
    assert str(path) in str(e.value)


def test_peers_without_a_key_file_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match="needs key_file"):
        config.load(write(tmp_path, "peers:\n  hostB: alpha\n"))


def test_the_tinymq_command_needs_only_database_and_control_socket(tmp_path):
    """A bad key the command does not use (log_level, here) is a problem to report, not a
    reason to stop: the running daemon keeps its configuration after a bad reload."""
    path = write(tmp_path, "database: /x.db\ncontrol_socket: /s\nlog_level: loud\n"
                           "key_file: /nonexistent\n")
    cfg, problem = config.load_for_client(path, database="/y.db")
    assert (cfg.database, cfg.control_socket, cfg.source) == ("/y.db", "/s", path)
    assert path in problem and "'log_level'" in problem and "\n" not in problem
    assert config.load_for_client(write(tmp_path, "port: 9100\n"))[1] is None
    with pytest.raises(config.ConfigError, match="'database'"):
        config.load_for_client(write(tmp_path, "database: ''\nlog_level: loud\n"))
    with pytest.raises(config.ConfigError, match="YAML syntax error"):
        config.load_for_client(write(tmp_path, "database: [oops\n"))
