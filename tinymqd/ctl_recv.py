"""`tinymq recv`: print received messages in order, then delete exactly the ones printed.

A message is deleted from mqin only after all of its bytes were written to standard
output (one write() per batch; a write to a pipe that returns has handed the bytes to
the reader). Killed between writing and deleting, a message is printed again next time:
never lost. When the reader closes the pipe, only the messages written whole before are
deleted. With --follow the command sleeps until another process commits (ctl_watch).
"""

import base64
import json
import math
import os
import select

from tinymqd import ctl_db
from tinymqd.ctl_watch import ChangeWaiter

BATCH = 1000  # messages read from mqin at once


class OutputClosed(Exception):
    """Standard output cannot take more (closed pipe, full disk); str() says why."""


class Output:
    """Writes to a file descriptor and says how many of a batch of messages went out
    whole."""

    def __init__(self, fd=1):
        self.fd = fd
        self.problem = None  # why output stopped (an OSError's text), or None

    def write(self, chunks):
        """Write the byte strings one after another; how many were written whole. On an
        error, self.problem says why and the rest is not written."""
        data = b"".join(chunks)
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                try:
                    done += os.write(self.fd, view[done:])
                except BlockingIOError:  # stdout left non-blocking by another program
                    select.select([], [self.fd], [])
        except BrokenPipeError:
            self.problem = "standard output was closed"
        except OSError as e:
            self.problem = f"cannot write to standard output: {e.strerror}"
        whole, end = 0, 0
        for chunk in chunks:
            end += len(chunk)
            if end > done:
                break
            whole += 1
        return whole


def plain(message):
    """The data only: text with a newline after it (unless it ends with one), a BLOB's
    bytes as they are, a number as SQLite shows it, NULL as an empty line."""
    kind, data = message["type"], message["data"]
    if kind == "blob":
        return data
    if kind == "text":
        return data if data.endswith(b"\n") else data + b"\n"
    if kind == "null":
        return b"\n"
    return (repr(data) if kind == "real" else str(data)).encode() + b"\n"


def as_json(message):
    """One line of JSON (the fields are documented in tinymq(1))."""
    kind, data = message["type"], message["data"]
    encoded = False
    if kind == "text":
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:  # TEXT that is not UTF-8: exactly, as base64
            data, encoded = base64.b64encode(data).decode("ascii"), True
    elif kind == "blob":
        data, encoded = base64.b64encode(data).decode("ascii"), True
    elif kind == "real" and not math.isfinite(data):
        data = repr(data)  # "inf", "-inf", "nan": JSON has no such numbers
    out = {"x": message["x"], "ts": message["ts"], "shost": message["shost"],
           "sport": message["sport"], "token": message["token"], "type": kind,
           "data": data, "base64": encoded, "sender": message["sender"],
           "seq": message["seq"], "sent_ts": message["sent_ts"], "key": message["key"]}
    return (json.dumps(out, ensure_ascii=False) + "\n").encode("utf-8")


def receive(db, output, stop, *, follow=False, keep=False, shosts=None, limit=None,
            render=plain):
    """Print messages of mqin (from `shosts` when given) in order and, unless `keep`,
    delete each batch once written; with `follow`, wait for more until `stop` is
    requested. Returns how many were printed; raises OutputClosed when the output
    failed (after deleting what was written whole)."""
    waiter = ChangeWaiter(db, stop) if follow else None  # before the first look
    printed, after = 0, 0
    try:
        while not stop.requested and (limit is None or printed < limit):
            want = BATCH if limit is None else min(BATCH, limit - printed)
            batch = ctl_db.received(db, after, shosts, want)
            if batch:
                whole = output.write([render(m) for m in batch])
                written = batch[:whole]
                if written:
                    after = written[-1]["x"]
                    printed += whole
                    if not keep:
                        ctl_db.delete_received(db, [m["x"] for m in written])
                if output.problem:
                    raise OutputClosed(f"{output.problem}: {printed} message(s) printed"
                                       f"{'' if keep else ' and deleted'}, the rest kept")
            elif not follow:
                break
            else:
                waiter.wait()
    finally:
        if waiter is not None:
            waiter.close()
    return printed
