"""Config: defaults, overrides, and one readable error naming the key."""

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


def test_not_a_mapping(tmp_path):
    with pytest.raises(config.ConfigError, match="mapping"):
        config.load(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "nope.yaml"))


def test_bad_port_argument_names_the_command_line(tmp_path):
    with pytest.raises(config.ConfigError, match="command line.*port"):
        config.load(write(tmp_path, ""), "99999")
