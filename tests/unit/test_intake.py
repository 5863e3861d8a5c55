"""Pure helpers of the sending side: the one rule for an unsendable row, size limits,
encoding a row into a message, address formatting."""

import socket
import sqlite3

import pytest

from tinymqd import encoding, numbering, protocol, store, transport
from tinymqd.constants import MAX_TOKEN_BYTES


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "t.db"
    store.initialize(str(path), new_run=True)
    conn = sqlite3.connect(path, isolation_level=None)
    yield conn
    conn.close()


ROWS = [  # host, port, problem (None: sendable)
    ("hostB", 9000, None),
    ("hostB", None, None),
    ("[::1]", 1, None),
    ("hostB", 65535, None),
    (None, 9000, "host is empty"),
    ("", 9000, "host is empty"),
    (" [] ", 9000, "host is empty"),
    ("hostB", 0, "port 0 is not"),
    ("hostB", 65536, "port 65536 is not"),
    ("hostB", "abc", "port 'abc' is not"),
    ("hostB", 9000.5, "port 9000.5 is not"),
]


@pytest.mark.parametrize("host,port,problem", ROWS)
def test_the_triggers_number_exactly_the_rows_the_rule_finds_no_problem_in(
        db, host, port, problem):
    db.execute("INSERT INTO mqout (host, port, data) VALUES (?, ?, 'x')", (host, port))
    stream, found = db.execute(
        f"SELECT stream, {numbering.row_problem('mqout')} FROM mqout").fetchone()
    if problem is None:
        assert found is None and stream is not None
    else:
        assert found.startswith(problem) and stream is None


def test_size_problems_name_the_limit():
    assert encoding.size_problem(10, None, None, 10) is None
    assert "max_message (9 bytes)" in encoding.size_problem(10, None, None, 9)
    assert encoding.size_problem(0, MAX_TOKEN_BYTES, 65535, 10) is None
    assert "token is 65536 bytes" in encoding.size_problem(0, MAX_TOKEN_BYTES + 1, 0, 10)
    assert "ts is 65536 bytes" in encoding.size_problem(0, 0, 65536, 10)


@pytest.mark.parametrize("kind,data,wire_kind,wire_data", [
    (b"text", b"h\xc3\xa9llo", protocol.KIND_TEXT, b"h\xc3\xa9llo"),
    (b"blob", b"\x00\xff", protocol.KIND_BLOB, b"\x00\xff"),
    (b"integer", 42, protocol.KIND_INTEGER, 42),
    (b"real", 2.5, protocol.KIND_REAL, 2.5),
    (b"real", float("-inf"), protocol.KIND_REAL, float("-inf")),
    (b"null", None, protocol.KIND_NULL, None),
])
def test_a_row_is_encoded_with_its_type_token_and_ts(kind, data, wire_kind, wire_data):
    message = protocol.decode_message(encoding._encode(kind, data, b"tok", b"2026-01-01"))
    assert message == protocol.Message(wire_kind, b"tok", b"2026-01-01", wire_data)
    assert protocol.decode_message(encoding._encode(kind, data, None, None)).token is None


@pytest.mark.parametrize("host,port,text", [
    ("hostB", 9000, "hostB:9000"),
    ("10.0.0.1", 1, "10.0.0.1:1"),
    ("::1", 9000, "[::1]:9000"),
    ("::ffff:10.0.0.1", 9000, "10.0.0.1:9000"),
])
def test_addresses_are_shown_as_admins_write_them(host, port, text):
    assert transport.format_endpoint(host, port) == text


@pytest.mark.parametrize("addr, bind, port, ours", [
    (("127.0.0.1", 9000), "127.0.0.1", 9000, True),
    (("127.0.0.2", 9000), "127.0.0.1", 9000, False),  # another daemon on the same port
    (("127.0.0.1", 9001), "127.0.0.1", 9000, False),
    (("::ffff:127.0.0.1", 9000, 0, 0), "127.0.0.1", 9000, True),
    (("::ffff:127.0.0.2", 9000, 0, 0), "::", 9000, True),  # bound to all: any local one
    (("::1", 9000, 0, 0), "::1", 9000, True),
])
def test_a_destination_reaches_us_only_at_the_address_and_port_we_bound(addr, bind, port,
                                                                         ours):
    family = socket.AF_INET6 if len(addr) == 4 else socket.AF_INET
    assert transport.reaches_us(addr, bind, port, family) is ours
