"""Values more than one module relies on: defaults users can change, and limits of the
wire format and of SQLite that users cannot."""

import logging

DEFAULT_CONFIG_FILE = "/etc/tinymq.yaml"
DEFAULT_DATABASE = "/var/lib/tinymq/tinymq.db"
DEFAULT_PORT = 9000  # also the port of a mqout row whose port is NULL
DEFAULT_BIND = "::"
DEFAULT_CONTROL_SOCKET = "/run/tinymq/control"  # the unit's RuntimeDirectory
DEFAULT_RETRY_MAX_S = 1.0  # cap of the retransmission backoff
# Below the IPv6 minimum MTU (1280) less headers: nothing relies on IP fragmentation.
DEFAULT_MAX_DATAGRAM_BYTES = 1200
MIN_DATAGRAM_BYTES = 512  # the smallest max_datagram allowed
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # largest data value, sent or accepted

MAX_TOKEN_BYTES = 65535  # a token longer than this is not sent (a row problem)

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "error": logging.ERROR}
