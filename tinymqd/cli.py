"""The command line: tinymqd [-c FILE] [--check-config] [--create-db] [--version]
[PORT [DATABASE]]."""

import argparse
import sys

from tinymqd import __version__, config, logsetup

EX_CONFIG = 78  # sysexits.h: configuration error


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="tinymqd",
        description="tinymq daemon: delivers rows of mqout to peers' mqin over UDP, "
                    "exactly once and in order.")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"config file (default: {config.DEFAULT_CONFIG_FILE} if it exists)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and exit (0: valid, 78: not)")
    parser.add_argument("--create-db", action="store_true",
                        help="create the database and its tables when missing, then exit "
                             "(the package does this on install, so that applications can "
                             "enqueue before the daemon first runs)")
    parser.add_argument("--version", action="version", version=f"tinymqd {__version__}")
    parser.add_argument("port", nargs="?", metavar="PORT",
                        help="UDP port to listen on (overrides the config file)")
    parser.add_argument("database", nargs="?", metavar="DATABASE",
                        help="SQLite database file (overrides the config file)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config.load(args.config, args.port, args.database)
    except config.ConfigError as e:
        logsetup.fatal(f"bad configuration: {e}")
        return EX_CONFIG
    for note in cfg.notes:
        print(f"tinymqd: warning: {note}", file=sys.stderr, flush=True)
    if args.check_config:
        print(f"{cfg.source}: configuration is valid")
        return 0
    if args.create_db:
        from tinymqd import store
        try:
            store.initialize(cfg.database)
        except store.StoreError as e:
            logsetup.fatal(str(e))
            return e.exit_status
        print(f"{cfg.database}: tables ready")
        return 0
    from tinymqd.daemon import Daemon  # after validation: --check-config needs no more

    return Daemon(cfg, lambda: config.load(args.config, args.port, args.database)).run()
