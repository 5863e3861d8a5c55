"""A row of mqout as a message on the wire: the limits of the encoding, and encoding."""

import logging

from tinymqd import protocol
from tinymqd.constants import MAX_TOKEN_BYTES

log = logging.getLogger("tinymqd.scheduler")

KIND_BY_TYPE = {b"null": protocol.KIND_NULL, b"integer": protocol.KIND_INTEGER,
                b"real": protocol.KIND_REAL, b"text": protocol.KIND_TEXT,
                b"blob": protocol.KIND_BLOB}


class Unsendable(Exception):
    """A row the wire format cannot carry; str() is its last_error."""


def row_message(kind, data, length, token, ts, max_message):
    """The row encoded for the wire; raises Unsendable with the reason it cannot be."""
    if ts.__class__ is not bytes:
        ts = b"" if ts is None else str(ts).encode()
    if token.__class__ is bytes:
        token_size = len(token)
    else:
        token_size = None
    size = len(data) if data.__class__ is bytes else length
    if (size is not None and size > max_message) or (token_size or 0) > MAX_TOKEN_BYTES \
            or len(ts) > protocol.MAX_SENT_BYTES:
        raise Unsendable(size_problem(size, token_size, len(ts), max_message))
    try:
        return _encode(kind, data, token, ts)
    except Exception as e:  # noqa: BLE001 - one odd row must not stop the others
        log.warning("a row cannot be encoded (%s); it stays in mqout with last_error",
                    e)
        raise Unsendable(f"cannot be sent: {e}") from None


def size_problem(size, token_size, ts_size, max_message):
    """Why a row's sizes do not fit (None: they do). A size of None is unknown."""
    if size is not None and size > max_message:
        return f"data is {size} bytes or more, larger than max_message ({max_message} bytes)"
    if token_size is not None and token_size > protocol.MAX_TOKEN_BYTES:
        return f"token is {token_size} bytes, larger than {protocol.MAX_TOKEN_BYTES} bytes"
    if ts_size is not None and ts_size > protocol.MAX_SENT_BYTES:
        return f"ts is {ts_size} bytes, larger than {protocol.MAX_SENT_BYTES} bytes"
    return None


def _encode(kind, data, token, ts):
    """A row as read (TEXT as bytes) encoded for the wire."""
    kind = KIND_BY_TYPE.get(kind, protocol.KIND_BLOB)
    if kind == protocol.KIND_INTEGER:
        data = int(data)
    elif kind == protocol.KIND_REAL:
        data = float(data)
    elif kind != protocol.KIND_NULL and not isinstance(data, bytes):
        data = str(data).encode()
    if token is not None and not isinstance(token, bytes):
        token = str(token).encode()
    return protocol.encode_message(kind, token, ts or b"", data)
