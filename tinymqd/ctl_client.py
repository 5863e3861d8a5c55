"""The `tinymq` command's side of the control socket: one request to a running tinymqd.

The daemon listens on an AF_UNIX stream socket (config `control_socket`, default
/run/tinymq/control). A client connects, sends one line (a JSON object and a newline),
reads one line back (a JSON object: {"ok": true, ...} or {"ok": false, "error": ...})
and closes. No socket file, or nobody listening on it, means the daemon is not running.
"""

import errno
import json
import socket
import time

from tinymqd import constants

TIMEOUT_S = 5.0
# The daemon's default (constants.py); the same value where an older one lacks it.
DEFAULT_CONTROL_SOCKET = getattr(constants, "DEFAULT_CONTROL_SOCKET", "/run/tinymq/control")
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a status of many destinations is still far below


class NotRunning(Exception):
    """No daemon answers on the control socket; str() says so and where it looked,
    `why` only where it looked."""

    def __init__(self, why):
        super().__init__(f"tinymqd is not running ({why})")
        self.why = why


class ControlError(Exception):
    """The daemon could not be asked, or said no; str() is one line for the user."""


def socket_path(cfg):
    """Where the daemon of this configuration listens."""
    return getattr(cfg, "control_socket", None) or DEFAULT_CONTROL_SOCKET


def request(path, command, timeout=TIMEOUT_S, **fields):
    """Send {"command": command, **fields} to the daemon at `path`; its answer (a dict
    with "ok": true). Raises NotRunning or ControlError."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _connect(sock, path)
        line = json.dumps({"command": command, **fields}) + "\n"
        try:
            sock.sendall(line.encode("utf-8"))
            raw = _read_line(sock, deadline)
        except socket.timeout:
            raise ControlError(f"tinymqd did not answer on {path} within "
                               f"{timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"control socket {path}: {e.strerror or e}") from None
    finally:
        sock.close()
    return _parse(raw, path)


def _connect(sock, path):
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        raise NotRunning(f"nothing listens on {path}") from None
    except PermissionError:
        raise ControlError(f"control socket {path}: permission denied (root and members "
                           f"of group tinymq may use it)") from None
    except socket.timeout:
        raise ControlError(f"control socket {path}: no answer within "
                           f"{sock.gettimeout():g} s") from None
    except OSError as e:
        if e.errno in (errno.ENOTSOCK, errno.ECONNRESET):
            raise NotRunning(f"{path} is not a live socket") from None
        raise ControlError(f"control socket {path}: {e.strerror or e}") from None


def _read_line(sock, deadline):
    """Bytes up to the first newline (or the end of the stream)."""
    chunks, size = [], 0
    while True:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk or size > MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks).split(b"\n", 1)[0]


def _parse(raw, path):
    if not raw:
        raise ControlError(f"tinymqd closed the control socket {path} without answering")
    try:
        answer = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ControlError(f"tinymqd sent an answer that is not JSON on {path}") from None
    if not isinstance(answer, dict):
        raise ControlError(f"tinymqd sent an answer that is not a JSON object on {path}")
    if answer.get("ok") is not True:
        error = str(answer.get("error") or "request refused").splitlines()[0]
        raise ControlError(f"tinymqd: {error}")
    return answer


def ask(cfg, command, **fields):
    """request() to the daemon of `cfg`."""
    return request(socket_path(cfg), command, **fields)

