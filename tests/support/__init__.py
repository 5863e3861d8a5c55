"""Helpers for tinymq's integration tests (and benchmarks).

- daemon.Daemon: one tinymqd node (config file, port, database); start() waits for READY=1
  on a real NOTIFY_SOCKET, stop() asserts exit 0 within 2 s after SIGTERM, kill() is a crash.
  TINYMQD_CMD="tinymqd" runs everything against an installed daemon instead of the tree.
- db: the sqlite3 CLI to enqueue (enqueue, enqueue_many, enqueue_series), read-only queries.
- wait.wait_until / holds_for: conditions with deadlines; they fail at once if a daemon died.
- relay.Relay: seeded UDP relay with loss/dup/reorder/delay/jitter/corrupt/truncate per
  direction; `/usr/bin/python3 -m tests.support.relay --help` for the command line.
- sink.UdpSink: a peer that records and never answers; ports.free_udp_port; checks.

Run: cd REPO && /usr/bin/python3 -m pytest tests/integration -q
"""
