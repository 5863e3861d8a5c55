"""The `tinymq` commands: one function each, taking the parsed arguments, the Config and
an open ctl_db.Database, printing what they did and returning the exit status.

Failures are raised (ctl_db.DbError, ctl_client.NotRunning / ControlError,
CommandError) and turned into one line and an exit status by ctl.main.
"""

import os
import socket
import sys
import time

from tinymqd import ctl_client, ctl_db, ctl_recv, ctl_report
from tinymqd.ctl_watch import ChangeWaiter, Stop


RELOAD_WAIT_S = 10.0  # a reload reads two files; host names are looked up after it


class CommandError(Exception):
    """The command did not do what was asked; str() is the one line for the user."""


def _say(line):
    print(line, flush=True)


def _note(line):
    print(f"tinymq: {line}", file=sys.stderr, flush=True)


def _where(host, port):
    """hostB:9000, or hostB (every port)."""
    return f"{host} (every port)" if port is None else ctl_report.endpoint(host, port)


def _tell_daemon(cfg, command, **fields):
    """Tell a running daemon, if any; a phrase saying what came of it."""
    try:
        ctl_client.ask(cfg, command, **fields)
        return "tinymqd was told"
    except ctl_client.NotRunning:
        return "tinymqd is not running: it takes effect when it starts"
    except ctl_client.ControlError as e:
        return f"tinymqd could not be told ({e}): it sees it within seconds"


# -- send --------------------------------------------------------------------------------

def message_value(raw):
    """TEXT when the bytes are UTF-8, else a BLOB (bytes), exactly."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def send(args, cfg, db):
    """Enqueue one message; print its x; with --wait, wait for its delivery."""
    if args.message is not None:
        data = message_value(os.fsencode(args.message))
    else:
        if sys.stdin.isatty():
            _note("reading the message from standard input; end it with Ctrl-D")
        data = message_value(sys.stdin.buffer.read())
    token = None if args.token is None else \
        os.fsencode(args.token).decode("utf-8", "replace")
    with Stop() as stop:
        waiter = ChangeWaiter(db, stop) if args.wait is not None else None
        try:
            x = ctl_db.enqueue(db, args.host, args.port, token, data)
            _say(str(x))
            if waiter is None:
                return 0
            return _wait_delivered(db, cfg, x, args.wait, waiter, stop)
        finally:
            if waiter is not None:
                waiter.close()


def _wait_delivered(db, cfg, x, timeout, waiter, stop):
    """Until row x has left mqout (0: delivered) or the time ran out (1, the row stays)."""
    remaining = None if timeout == float("inf") else timeout
    row = ctl_db.queued_row(db, x)
    while row is not None:
        if stop.requested:
            raise CommandError(f"interrupted: x {x} is still queued for "
                               f"{ctl_report.endpoint(row[0], row[1])}")
        if remaining is not None and remaining <= 0:
            why = f" (last_error: {row[2]})" if row[2] else ""
            raise CommandError(f"x {x} is still queued for "
                               f"{ctl_report.endpoint(row[0], row[1])} after {timeout:g} s"
                               f"{why}; it stays in mqout")
        started = time.monotonic()
        waiter.wait(remaining)
        if remaining is not None:
            remaining -= time.monotonic() - started
        row = ctl_db.queued_row(db, x)
    _, daemon = ctl_report.daemon_for(cfg, db.path)
    if daemon["running"] is False:
        raise CommandError(f"x {x} left mqout while tinymqd is not running: deleted "
                           f"(cancelled), not delivered")
    if daemon["running"] is None:
        _note(f"x {x} left mqout: delivered, or deleted ({daemon['error']})")
    return 0


# -- recv --------------------------------------------------------------------------------

def recv(args, cfg, db):
    """Print received messages, then delete the ones printed (unless --keep)."""
    shosts = None if args.sender is None else _addresses(args.sender)
    render = ctl_recv.as_json if args.json else ctl_recv.plain
    sys.stdout.flush()
    with Stop() as stop:
        try:
            ctl_recv.receive(db, ctl_recv.Output(sys.stdout.fileno()), stop,
                             follow=args.follow, keep=args.keep, shosts=shosts,
                             limit=args.limit, render=render)
        except ctl_recv.OutputClosed as e:
            quiet_stdout()
            raise CommandError(str(e)) from None
    return 0


def _addresses(host):
    """The host as written and, when it is a name, the addresses it resolves to (as
    mqin.shost shows them)."""
    names = {host, host.strip("[]")}
    try:
        for *_, sockaddr in socket.getaddrinfo(host.strip("[]"), None,
                                               type=socket.SOCK_DGRAM):
            address = sockaddr[0].split("%", 1)[0]
            names.add(address[7:] if address.startswith("::ffff:") and "." in address
                      else address)
    except (OSError, UnicodeError):
        pass  # not resolvable: matched as written only
    return names


def quiet_stdout():
    """Nothing more goes to a closed stdout (no complaint at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- status, queue -----------------------------------------------------------------------

def status(args, cfg, db):
    """The daemon, destinations and senders; database figures alone when it is down."""
    st = ctl_report.status(db, cfg)
    if args.json:
        _say(ctl_report.to_json(st))
    else:
        for line in ctl_report.status_text(st):
            print(line)
    return 0


def queue(args, cfg, db):
    """The rows waiting in mqout, like mailq."""
    rows = ctl_db.queue_listing(db, to=args.to)
    if args.json:
        for row in rows:
            print(ctl_report.to_json(row))
    else:
        for line in ctl_report.queue_text(rows):
            print(line)
    return 0


# -- flush, reload, hold, release, delete ------------------------------------------------

def flush(args, cfg, db):
    """Ask the daemon to retry now (needs it: NotRunning otherwise)."""
    answer = ctl_client.ask(cfg, "flush", host=args.host, port=args.port)
    woken = answer.get("destinations", 0)
    if args.host is not None and not woken:
        _say(f"tinymqd has nothing for {_where(args.host, args.port)}")
    else:
        _say(f"flushed {woken} destination{'' if woken == 1 else 's'}")
    return 0


def reload(args, cfg, db):
    """Ask the daemon to read its configuration again; it answers once it runs with it."""
    try:
        answer = ctl_client.ask(cfg, "reload", timeout=RELOAD_WAIT_S)
    except ctl_client.NotRunning:
        # control_socket was just edited (it takes effect at a restart): the daemon
        # still listens where it did, in the usual case the default place.
        if ctl_client.socket_path(cfg) == ctl_client.DEFAULT_CONTROL_SOCKET:
            raise
        answer = ctl_client.request(ctl_client.DEFAULT_CONTROL_SOCKET, "reload",
                                    timeout=RELOAD_WAIT_S)
    _say(f"tinymqd reloaded {answer.get('config') or 'its configuration'}")
    return 0


def hold(args, cfg, db):
    """Note the hold in tinymq_holds (it outlives restarts), then tell the daemon."""
    where = _where(args.host, args.port)
    if not ctl_db.hold(db, args.host, args.port):
        _say(f"{where} was already held")
        return 0
    _say(f"held {where}: nothing is sent to it until `tinymq release {args.host}`; "
         f"{_tell_daemon(cfg, 'holds')}")
    return 0


def release(args, cfg, db):
    """Remove the holds of the destination, then tell the daemon."""
    where = _where(args.host, args.port)
    if not ctl_db.release(db, args.host, args.port):
        _say(f"{where} was not held")
        return 0
    _say(f"released {where}; {_tell_daemon(cfg, 'holds')}")
    return 0


def delete(args, cfg, db):
    """DELETE rows of mqout: the x given, or by destination and/or age."""
    deleted, skipped = ctl_db.delete_queued(db, xs=args.xs or None, to=args.to,
                                            older_than=args.older_than)
    _say(f"deleted {deleted}")
    if skipped:
        _note(f"{skipped} row{'' if skipped == 1 else 's'} kept: ts is not a date "
              f"(--older-than compares ts as UTC text, as CURRENT_TIMESTAMP writes it)")
    return 0


COMMANDS = {"send": send, "recv": recv, "status": status, "queue": queue, "flush": flush,
            "reload": reload, "hold": hold, "release": release, "delete": delete}
