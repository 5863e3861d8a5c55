"""Configuration: defaults, the YAML file, and validation with errors that name the key."""

import dataclasses
import ipaddress
import os

import yaml

from tinymqd.constants import (DEFAULT_BIND, DEFAULT_CONFIG_FILE, DEFAULT_DATABASE,
                               DEFAULT_MAX_DATAGRAM_BYTES, DEFAULT_MAX_MESSAGE_BYTES,
                               DEFAULT_PORT, DEFAULT_RETRY_MAX_S, LOG_LEVELS)


class ConfigError(Exception):
    """A problem with the configuration; str() is the one line shown to the user."""


@dataclasses.dataclass(frozen=True)
class Config:
    port: int = DEFAULT_PORT
    bind: str = DEFAULT_BIND
    database: str = DEFAULT_DATABASE
    log_level: str = "info"
    retry_max: float = DEFAULT_RETRY_MAX_S  # cap of the retransmission backoff, seconds
    max_datagram: int = DEFAULT_MAX_DATAGRAM_BYTES  # UDP payload, bytes
    max_message: int = DEFAULT_MAX_MESSAGE_BYTES  # largest data value, bytes
    source: str = "built-in defaults"  # where the settings came from, for log lines


def _check_port(value):
    if not 1 <= value <= 65535:
        return "must be between 1 and 65535"
    return None


def _check_bind(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IPv4 or IPv6 address such as '::' or '0.0.0.0'"
    return None


def _check_path(value):
    return None if value.strip() else "must not be empty"


def _check_log_level(value):
    if value not in LOG_LEVELS:
        return "must be one of " + ", ".join(LOG_LEVELS)
    return None


def _check_retry_max(value):
    return None if 0.05 <= value <= 3600 else "must be between 0.05 and 3600 seconds"


def _check_datagram(value):
    return None if 512 <= value <= 65000 else "must be between 512 and 65000 bytes"


def _check_message(value):
    return None if 0 <= value <= 1024**3 else "must be between 0 and 1073741824 bytes"


# key -> (accepted Python types, checker)
_SCHEMA = {
    "port": ((int,), _check_port),
    "bind": ((str,), _check_bind),
    "database": ((str,), _check_path),
    "log_level": ((str,), _check_log_level),
    "retry_max": ((int, float), _check_retry_max),
    "max_datagram": ((int,), _check_datagram),
    "max_message": ((int,), _check_message),
}

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def validate(values, source):
    """Check a mapping of settings and return a Config; raise ConfigError naming the key."""
    return Config(source=source, **_clean(values, source))


def _clean(values, source):
    clean = {}
    for key, value in values.items():
        if key not in _SCHEMA:
            known = ", ".join(sorted(_SCHEMA))
            raise ConfigError(f"{source}: unknown key '{key}' (known keys: {known})")
        types, check = _SCHEMA[key]
        # bool is an int in Python, but 'port: yes' is a typo, not a port.
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(
                f"{source}: key '{key}' must be {_TYPE_NAMES[types[-1]]}, got {value!r}")
        problem = check(value)
        if problem:
            raise ConfigError(f"{source}: key '{key}' {problem}, got {value!r}")
        clean[key] = float(value) if float in types else value
    return clean


def load(path=None, port=None, database=None):
    """Read the config file (or defaults) and apply command-line overrides.

    path None means: the default file when it exists, else built-in defaults.
    """
    values = {}
    source = "built-in defaults"
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        source = path
        values = _read_yaml(path)
    settings = _clean(values, source)
    overrides = {}
    if port is not None:
        overrides["port"] = _parse_port_argument(port)
    if database is not None:
        overrides["database"] = database
    settings.update(_clean(overrides, "command line"))
    return Config(source=source, **settings)


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of 'key: value' lines")
    return data


def _parse_port_argument(text):
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"command line: PORT must be an integer, got {text!r}") from None
