"""Helpers for tinymq's integration tests and benchmarks (one copy of each).

- daemon.Daemon: one tinymqd node (config file, port, database); start() waits for READY=1
  on a real NOTIFY_SOCKET, stop() asserts exit 0 within 2 s after SIGTERM, kill() is a crash.
  TINYMQD_CMD="tinymqd" runs everything against an installed daemon instead of the tree.
- db: the sqlite3 CLI to enqueue (enqueue, enqueue_many, enqueue_series), plain INSERTs as
  users type them (plain_insert, plain_inserts), read-only queries, series_numbers.
- checks: exactly once and in order (assert_series_delivered, assert_exactly_once_in_order),
  the durable hand-off at any moment (assert_handoff).
- wait.wait_until / holds_for: conditions with deadlines; they fail at once if a daemon died.
- relay.Relay: seeded UDP relay with loss/dup/reorder/delay/jitter/corrupt/truncate per
  direction, capturing on request, sending as the target (send_from_listening_port) or as
  a client (send_upstream); relay.RelayProcess runs it as its own process
  (`/usr/bin/python3 -m tests.support.relay --help` for the command line);
  relay.send_spoofed: a datagram with a forged source address (raw socket, root).
- chaos: ChaosRun (both ways through relays, kills at seeded moments; keyed=True for
  keyed peers) and Direction (one numbered stream: enqueue, hand-off, end checks).
- wire: the wire format written from docs/PROTOCOL.md (seal, reseal, problem, Hostile),
  keyed peers' sealing (aead_seal, aead_open), a minimal peer of one's own (Client: the
  cookie round trip, DATA the daemon takes, sync) and exchange() to capture real traffic.
- observe: a daemon's log since a mark, memory, CPU time, STATUS= figures.
- disk: a small tmpfs that fills up, an application holding the write lock.
- sink.UdpSink: a peer that records and never answers; ports.free_udp_port.

Run: cd REPO && /usr/bin/python3 -m pytest tests/integration -q
"""
