"""The control socket: a thread that answers the `tinymq` command (status, flush, holds)
on an AF_UNIX socket, so live figures never have to be written into the database.

One request per connection: a line of JSON, answered with a line of JSON. The thread
serves many clients at once without blocking on any (non-blocking sockets, select):
a slow, silent or hostile client costs a file descriptor until its deadline, never a
worker's time. A malformed or oversized request gets an error, and the daemon carries
on.
"""

import errno
import json
import logging
import os
import select
import socket
import time

from tinymqd.worker import Worker

log = logging.getLogger("tinymqd.control")

MAX_REQUEST_BYTES = 4096
CLIENT_DEADLINE_S = 5.0  # a client that has not sent its request by then is dropped
MAX_CLIENTS = 64
POLL_S = 0.25  # wake up this often to show signs of life (the watchdog)
SOCKET_MODE = 0o660  # the daemon's user and group tinymq
DIRECTORY_MODE = 0o750


class ControlError(Exception):
    """The socket cannot be made; str() says why."""


def bind(path):
    """A listening socket at path; a socket file left by a daemon that died is replaced,
    one another daemon listens on is not."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, DIRECTORY_MODE, exist_ok=True)
    except OSError as e:
        raise ControlError(f"cannot make {directory}: {e.strerror}") from None
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise ControlError(f"{path} is in use by another tinymqd")
        except OSError:
            os.unlink(path)  # nobody answers: left over
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, SOCKET_MODE)
        sock.listen(MAX_CLIENTS)
    except OSError as e:
        sock.close()
        raise ControlError(f"cannot listen on {path}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


class Control(Worker):
    """`handlers`: {command name: callable(request dict) -> response dict}."""

    name = "control"

    def __init__(self, stopping, sock, path, handlers):
        super().__init__(stopping)
        self.sock = sock
        self.path = path
        self.handlers = handlers
        self.clients = {}  # socket -> (deadline, bytes received)

    def loop(self):
        try:
            while not self.stopping.is_set():
                self.beat()
                readable, _, _ = select.select([self.sock, *self.clients], [], [], POLL_S)
                for sock in readable:
                    if sock is self.sock:
                        self._accept()
                    else:
                        self._read(sock)
                self._expire(time.monotonic())
        finally:
            for client in list(self.clients):
                client.close()
            self.sock.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _accept(self):
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                log.warning("control socket: cannot take a client now (%s)", e.strerror)
            return
        if len(self.clients) >= MAX_CLIENTS:
            client.close()
            return
        client.setblocking(False)
        self.clients[client] = (time.monotonic() + CLIENT_DEADLINE_S, b"")

    def _read(self, client):
        deadline, received = self.clients[client]
        try:
            chunk = client.recv(MAX_REQUEST_BYTES + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        received += chunk
        if b"\n" in received or not chunk or len(received) > MAX_REQUEST_BYTES:
            del self.clients[client]
            self._answer(client, received, complete=bool(chunk) or b"\n" in received)
        else:
            self.clients[client] = (deadline, received)

    def _expire(self, now):
        for client, (deadline, _) in list(self.clients.items()):
            if now > deadline:
                del self.clients[client]
                client.close()

    def _answer(self, client, received, complete):
        response = self._respond(received, complete)
        data = (json.dumps(response) + "\n").encode()
        try:
            client.setblocking(True)
            client.settimeout(1.0)  # a reader that does not read is dropped
            client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()

    def _respond(self, received, complete):
        if len(received) > MAX_REQUEST_BYTES:
            return {"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
        line = received.split(b"\n", 1)[0]
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):  # e.g. 4,000 "["
            return {"ok": False, "error": "not a JSON request"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": "a request is {\"command\": ...}"}
        handler = self.handlers.get(request["command"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {request['command'][:40]!r} "
                                          f"(known: {', '.join(sorted(self.handlers))})"}
        try:
            return {"ok": True, **handler(request)}
        except RequestError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - the daemon carries on whatever happens
            log.warning("control request %r failed: %s", request["command"], e)
            return {"ok": False, "error": f"failed: {type(e).__name__}"}


class RequestError(Exception):
    """A request that cannot be served; str() is the error line for the client."""
