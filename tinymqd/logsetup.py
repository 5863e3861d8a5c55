"""Logging: to the journal (with structured fields) under systemd, else to stderr."""

import logging
import os
import sys

from tinymqd.constants import LOG_LEVELS



def stderr_is_journal():
    """True when systemd connected our stderr to the journal (see systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def setup(level="info"):
    root = logging.getLogger("tinymqd")
    root.handlers.clear()
    root.propagate = False
    root.setLevel(LOG_LEVELS[level])
    handler = None
    if stderr_is_journal():
        try:
            from systemd.journal import JournalHandler
            handler = JournalHandler(SYSLOG_IDENTIFIER="tinymqd")
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s tinymqd %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    return root


def set_level(level):
    logging.getLogger("tinymqd").setLevel(LOG_LEVELS[level])


def fields(peer=None, stream=None, node=None):
    """Structured journal fields of a log line about a peer, a stream or a node, for
    `logging`'s extra=: journalctl -u tinymq TINYMQ_PEER=hostB:9000 finds the lines of
    one peer."""
    out = {}
    if peer is not None:
        out["TINYMQ_PEER"] = peer
    if stream is not None:
        out["TINYMQ_STREAM"] = f"{stream:016x}"
    if node is not None:
        out["TINYMQ_NODE"] = f"{node:016x}"
    return out


def fatal(message):
    """A start-up failure: one line on stderr (the unit's stream carries it to the
    journal with the unit's name even when the process exits at once)."""
    print(f"tinymqd: error: {message}", file=sys.stderr, flush=True)
