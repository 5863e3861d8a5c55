"""Configuration: defaults, the YAML file, and validation with errors that name the key."""

import dataclasses
import ipaddress
import os

import yaml

from tinymqd import keys
from tinymqd.constants import (DEFAULT_BIND, DEFAULT_CONFIG_FILE, DEFAULT_CONTROL_SOCKET,
                               DEFAULT_DATABASE,
                               DEFAULT_MAX_DATAGRAM_BYTES, DEFAULT_MAX_MESSAGE_BYTES,
                               DEFAULT_PORT, DEFAULT_RETRY_MAX_S, LOG_LEVELS,
                               MIN_DATAGRAM_BYTES)


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
    allow: tuple = None  # networks that may send us data (None: any)
    key_file: str = None
    peers: dict = None  # as written: entry -> [key names]
    require_key: bool = None  # None: when key_file is set
    control_socket: str = DEFAULT_CONTROL_SOCKET  # where `tinymq` finds the daemon
    source: str = "built-in defaults"  # where the settings came from, for log lines
    keys: dict = dataclasses.field(default=None, repr=False)  # name -> key, from key_file
    # Lines for the admin about a file that is used as it is (e.g. a key given twice).
    notes: tuple = dataclasses.field(default=(), compare=False, repr=False)

    @property
    def keys_required(self):
        return self.require_key if self.require_key is not None else bool(self.key_file)

    def peer_keys(self):
        """A new keys.PeerKeys for the `peers` map (empty without keys)."""
        return keys.PeerKeys(self.peers or {}, self.keys or {})


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
    if "\0" in value:
        return "must not contain a NUL character"
    return None if value.strip() else "must not be empty"


def _check_log_level(value):
    if value not in LOG_LEVELS:
        return "must be one of " + ", ".join(LOG_LEVELS)
    return None


def _check_retry_max(value):
    return None if 0.05 <= value <= 3600 else "must be between 0.05 and 3600 seconds"


def _check_datagram(value):
    if MIN_DATAGRAM_BYTES <= value <= 65000:
        return None
    return f"must be between {MIN_DATAGRAM_BYTES} and 65000 bytes"


def _check_message(value):
    return None if 0 <= value <= 1024**3 else "must be between 0 and 1073741824 bytes"


def _check_allow(value):
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            return f"must be a list of networks such as '10.0.0.0/8' or '::1', not {item!r}"
    return None


def _check_nothing(value):
    return None


# key -> (accepted Python types, checker)
_SCHEMA = {
    "port": ((int,), _check_port),
    "bind": ((str,), _check_bind),
    "database": ((str,), _check_path),
    "log_level": ((str,), _check_log_level),
    "retry_max": ((int, float), _check_retry_max),
    "max_datagram": ((int,), _check_datagram),
    "max_message": ((int,), _check_message),
    "allow": ((list,), _check_allow),
    "key_file": ((str,), _check_path),
    "peers": ((dict,), _check_nothing),  # checked against the key file, in _with_keys
    "require_key": ((bool,), _check_nothing),
    "control_socket": ((str,), _check_path),
}
# What a reload cannot change in a running daemon (systemctl restart does).
NEEDS_RESTART = ("port", "bind", "database", "max_datagram", "max_message", "control_socket")

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping", bool: "true or false"}


def validate(values, source):
    """Check a mapping of settings and return a Config; raise ConfigError naming the key."""
    return _with_keys(_clean(values, source), source)


def _with_keys(settings, source):
    """The Config, with the key file read and `peers` checked against it."""
    peers, key_file = settings.get("peers"), settings.get("key_file")
    if peers and not key_file:
        raise ConfigError(f"{source}: key 'peers' needs key_file (the keys it names)")
    if settings.get("require_key") and not key_file:
        raise ConfigError(f"{source}: key 'require_key' is true but there is no key_file")
    if key_file:
        try:
            settings["keys"] = keys.load_key_file(key_file)
            settings["peers"] = keys.parse_peers(peers or {}, settings["keys"], source)
        except keys.KeysError as e:
            raise ConfigError(f"{source}: key 'key_file': {e}" if str(e).startswith(key_file)
                              else str(e)) from None
    return Config(source=source, **settings)


def _clean(values, source):
    clean = {}
    for key, value in values.items():
        if key not in _SCHEMA:
            known = ", ".join(sorted(_SCHEMA))
            raise ConfigError(f"{source}: unknown key '{key}' (known keys: {known})")
        types, check = _SCHEMA[key]
        # bool is an int in Python, but 'port: yes' is a typo, not a port.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ConfigError(
                f"{source}: key '{key}' must be {_TYPE_NAMES[types[-1]]}, got {value!r}")
        problem = check(value)
        if problem:
            raise ConfigError(f"{source}: key '{key}' {problem}, got {value!r}")
        clean[key] = float(value) if float in types else value
    if "allow" in clean:
        clean["allow"] = tuple(ipaddress.ip_network(item, strict=False)
                               for item in clean["allow"])
    return clean


def load(path=None, port=None, database=None):
    """Read the config file (or defaults) and apply command-line overrides.

    path None means: the default file when it exists, else built-in defaults.
    """
    values, notes, source = _read_file(path)
    settings = _clean(values, source)
    settings["notes"] = notes
    overrides = {}
    if port is not None:
        overrides["port"] = _parse_port_argument(port)
    if database is not None:
        overrides["database"] = database
    settings.update(_clean(overrides, "command line"))
    return _with_keys(settings, source)


# The keys the `tinymq` command uses; the others are the daemon's.
CLIENT_KEYS = ("database", "control_socket")


def load_for_client(path=None, database=None):
    """(Config, problem) for the `tinymq` command: only database and control_socket must
    be right. A problem with another key (problem: its one line, else None) is the
    daemon's: a bad edit keeps the running daemon's configuration (systemctl reload), and
    tinymq keeps working meanwhile. The key file is not read."""
    values, _, source = _read_file(path)
    settings = _clean({key: values[key] for key in CLIENT_KEYS if key in values}, source)
    if database is not None:
        settings.update(_clean({"database": database}, "command line"))
    try:
        _clean(values, source)
        problem = None
    except ConfigError as e:
        problem = str(e)
    return Config(source=source, **settings), problem


def _read_file(path):
    """(values, notes, source) of the config file; path None: the default file when it
    exists, else built-in defaults."""
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path is None:
        return {}, (), "built-in defaults"
    return (*_read_yaml(path), path)


class _NotingLoader(yaml.SafeLoader):
    """SafeLoader that notes a key given twice (YAML keeps the last one, as an admin who
    appends an override expects, but it must not pass unsaid) and refuses a key that is
    not a name."""

    def __init__(self, stream):
        super().__init__(stream)
        self.repeated = []  # (key, line)

    def compose_node(self, parent, index):
        # Aliases (*name) could make a few hundred bytes stand for gigabytes of values,
        # and a config needs none.
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<) are not allowed", key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is not a name", key_node.start_mark)
            if key in seen:
                self.repeated.append((key, key_node.start_mark.line + 1))
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path):
    try:
        if not os.path.isfile(path) and os.path.exists(path):  # a FIFO would hang us
            raise ConfigError(f"{path}: is not a regular file")
        with open(path, encoding="utf-8") as f:
            loader = _NotingLoader(f)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    notes = tuple(f"{path}: key {key!r} is given again at line {line}; the last one "
                  f"counts" for key, line in loader.repeated)
    if data is None:
        return {}, notes
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of 'key: value' lines")
    return data, notes


def _parse_port_argument(text):
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"command line: PORT must be an integer, got {text!r}") from None
