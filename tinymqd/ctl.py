"""The `tinymq` command line: tinymq [-c FILE] [--database FILE] COMMAND ...

send, recv, status, queue, flush, reload, hold, release, delete (tinymq(1)). This module
parses the arguments, reads the configuration, opens the database and maps every failure to
one line on stderr and an exit status: 0 done, 1 failed, 2 usage, 69 the daemon is not
running where it is needed (sysexits.h EX_UNAVAILABLE). The commands are in
ctl_commands. From a checkout: /usr/bin/python3 -m tinymqd.ctl ARGS.
"""

import argparse
import math
import os
import re
import sys

from tinymqd import __version__, config, ctl_client, ctl_commands, ctl_db
from tinymqd.constants import MAX_TOKEN_BYTES

EX_FAILED = 1
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_INTERRUPTED = 130

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhdw]?)")


def duration(text):
    """Seconds from 30, 30s, 10m, 2h, 7d, 1w or a sum such as 1h30m."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text or \
            (len(parts) > 1 and not all(u for _, u in parts)):
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (examples: 30s, 10m, 2h, 7d, 1h30m)")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _wait_seconds(text):
    """--wait's value: empty (bare --wait, see _bare_wait) means no limit."""
    return math.inf if text == "" else duration(text)


def _bare_wait(argv):
    """`--wait` not followed by a duration waits without limit: `tinymq send --wait
    HOST MSG` must not take HOST for the seconds."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == "--wait":
            following = out[i + 1] if i + 1 < len(out) else None
            try:
                is_duration = following is not None and duration(following) >= 0
            except argparse.ArgumentTypeError:
                is_duration = False
            if not is_duration:
                out[i] = "--wait="
    return out


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port from 1 to 65535: {text!r}")
    return value


def _host(text):
    """A destination as the daemon names it: no surrounding blanks or [brackets]."""
    host = text.strip(" []")
    if not host:
        raise argparse.ArgumentTypeError("the host is empty")
    return host


def _token(text):
    if len(os.fsencode(text)) > MAX_TOKEN_BYTES:
        raise argparse.ArgumentTypeError(f"longer than {MAX_TOKEN_BYTES} bytes, the most "
                                         f"tinymqd sends")
    return text


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def _row(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a row number (x): {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (and exit 2)."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr,
              flush=True)
        sys.exit(EX_USAGE)


class _Commands:
    """The commands' parsers. Each parses its own arguments, intermixed (options may
    come after HOST), which argparse's subparsers cannot do."""

    def __init__(self):
        self.parsers = {}
        self.help = {}

    def add_parser(self, name, help_text, description):
        self.help[name] = help_text
        p = self.parsers[name] = _Parser(prog=f"tinymq {name}", description=description,
                                         allow_abbrev=False)
        _global_options(p, argparse.SUPPRESS)  # also after the command
        return p


def _add_send(sub):
    p = sub.add_parser("send", "enqueue a message",
                 "Enqueue MESSAGE (or standard input, byte for byte: not UTF-8 is sent as "
                 "a BLOB) to HOST and print its x. Waits for locks, never fails on one.")
    p.add_argument("--token", metavar="T", type=_token,
                   help="the row's token (default: NULL)")
    p.add_argument("--port", type=_port, metavar="P", help="destination UDP port "
                   "(default: 9000)")
    p.add_argument("--wait", type=_wait_seconds, metavar="SECONDS",
                   nargs="?", const=math.inf,
                   help="return once delivered (exit 0), or fail after SECONDS (exit 1, "
                        "the row stays); no SECONDS: no limit")
    p.add_argument("host", type=_host, metavar="HOST")
    p.add_argument("message", nargs="?", metavar="MESSAGE")


def _add_recv(sub):
    p = sub.add_parser("recv", "print, then delete, received messages",
                 "Print the messages in mqin in order, then delete exactly the ones "
                 "printed (after they were written out).")
    p.add_argument("-f", "--follow", action="store_true",
                   help="wait for new messages until interrupted")
    p.add_argument("--keep", action="store_true", help="do not delete what was printed")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--from", dest="sender", metavar="HOST",
                   help="only messages from HOST (as in shost, or its addresses)")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N messages")


def _add_rest(sub):
    p = sub.add_parser("status", "show the daemon, destinations and senders",
                 "Is tinymqd running; per destination and per sender what the database "
                 "and the daemon know.")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p = sub.add_parser("queue", "list the rows waiting in mqout",
                 "A mailq-like listing of mqout: x, age, destination, size, last_error.")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--to", type=_host, metavar="HOST", help="only rows to HOST")
    p = sub.add_parser("flush", "retry now, ending any backoff",
                 "Ask tinymqd to retry now (all destinations, or HOST's).")
    p.add_argument("host", nargs="?", type=_host, metavar="HOST")
    p.add_argument("--port", type=_port, metavar="P", help="only HOST's port P")
    sub.add_parser("reload", "make tinymqd read its configuration again",
                   "Ask tinymqd to read its configuration again (as systemctl reload "
                   "tinymq does) and wait until it runs with it; a bad file is refused and "
                   "the running configuration stays.")
    for name, what in (("hold", "stop sending to HOST (kept across restarts)"),
                       ("release", "resume sending to HOST")):
        p = sub.add_parser(name, what, what[0].upper() + what[1:] + ".")
        p.add_argument("host", type=_host, metavar="HOST")
        p.add_argument("--port", type=_port, metavar="P", help="only port P (default: all)")
    p = sub.add_parser("delete", "cancel rows of mqout",
                 "Delete rows of mqout (cancelling them): by x, or by destination and/or "
                 "age; print how many.")
    p.add_argument("xs", nargs="*", type=_row, metavar="X")
    p.add_argument("--to", type=_host, metavar="HOST", help="the rows to HOST")
    p.add_argument("--older-than", type=duration, metavar="DURATION",
                   help="the rows whose ts is older (30s, 10m, 2h, 7d)")


def _global_options(p, default=None):
    p.add_argument("-c", "--config", metavar="FILE", default=default,
                   help=f"config file (default: {config.DEFAULT_CONFIG_FILE} if it exists)")
    p.add_argument("--database", metavar="FILE", default=default,
                   help="the database (overrides the config)")


def _top_parser(commands):
    listing = "\n".join(f"  {name:<9} {text}" for name, text in commands.help.items())
    p = _Parser(
        prog="tinymq", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send, receive and look after tinymq messages (tinymq(1)).",
        epilog=f"commands (tinymq COMMAND --help says more):\n{listing}\n\n"
               f"exit status: 0 done, 1 failed, 2 usage, 69 tinymqd not running")
    _global_options(p)
    p.add_argument("--version", action="version", version=f"tinymq {__version__}")
    p.add_argument("command", metavar="COMMAND", choices=list(commands.parsers))
    p.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="the command's arguments")
    return p


def parse_args(argv):
    """The global options, then the command's own arguments, in one Namespace."""
    commands = _Commands()
    _add_send(commands)
    _add_recv(commands)
    _add_rest(commands)
    args = _top_parser(commands).parse_args(argv)
    commands.parsers[args.command].parse_intermixed_args(_bare_wait(args.arguments),
                                                         namespace=args)
    usage = commands.parsers[args.command]
    if args.command == "delete":
        if args.xs and (args.to or args.older_than is not None):
            usage.error("give X..., or --to and/or --older-than, not both")
        if not args.xs and args.to is None and args.older_than is None:
            usage.error("say what to delete: X..., --to HOST or --older-than DURATION")
    if args.command == "flush" and args.port is not None and args.host is None:
        usage.error("--port needs HOST")
    return args


def _fail(message, status=EX_FAILED):
    print(f"tinymq: error: {message}", file=sys.stderr, flush=True)
    return status


def run(args):
    """Load the configuration, open the database and run the command."""
    cfg, problem = config.load_for_client(args.config, database=args.database)
    if problem and args.command != "reload":  # for reload, tinymqd's answer says it
        print(f"tinymq: warning: {problem} (not used by tinymq; tinymqd refuses the file "
              f"at its next reload or restart)", file=sys.stderr, flush=True)
    command = ctl_commands.COMMANDS[args.command]
    if args.command in ("flush", "reload"):  # the daemon's business only
        return command(args, cfg, None)
    db = ctl_db.open_database(cfg.database, write=args.command not in ("status", "queue"))
    try:
        return command(args, cfg, db)
    finally:
        db.close()


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # started with >&-: nothing could be printed (or recv'd)
        return _fail("standard output is closed")
    old = os.umask(0)
    os.umask(old & 0o707)  # files SQLite makes stay usable by group tinymq
    try:
        return run(args)
    except config.ConfigError as e:
        return _fail(f"bad configuration: {e}")
    except ctl_client.NotRunning as e:
        return _fail(str(e), EX_UNAVAILABLE)
    except (ctl_db.DbError, ctl_client.ControlError, ctl_commands.CommandError) as e:
        return _fail(str(e))
    except BrokenPipeError:
        ctl_commands.quiet_stdout()  # `tinymq queue | head`: stop quietly
        return EX_FAILED
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        if os.environ.get("TINYMQ_DEBUG"):
            raise
        return _fail(f"unexpected {type(e).__name__}: {e} (TINYMQ_DEBUG=1 shows where)")


if __name__ == "__main__":
    sys.exit(main())
