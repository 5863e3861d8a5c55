"""`tinymq status` and `tinymq queue`: the figures, merged from the database and (when it
runs) the daemon's control socket, as text for people or as JSON for programs.

The JSON formats are stable and documented in tinymq(1): fields are only ever added.
"""

import json
import os

from tinymqd import ctl_client, ctl_db

_DAEMON_FIELDS = ("pid", "started", "uptime_s", "node", "address", "port", "version",
                  "database", "config")


# -- gathering ---------------------------------------------------------------------------

def status(db, cfg):
    """The status as one dict: {"daemon", "destinations", "holds", "senders"}."""
    live, daemon = daemon_for(cfg, db.path)
    holds = [{"host": host, "port": port, "since": since}
             for host, port, since in ctl_db.holds(db)]
    if daemon["node"] is None:
        daemon["node"] = ctl_db.node_id(db)
    if daemon["database"] is None:
        daemon["database"] = db.path
    return {"daemon": daemon,
            "destinations": _destinations(ctl_db.destinations(db), holds,
                                          live.get("destinations") if live else None),
            "holds": holds,
            "senders": _senders(ctl_db.senders(db), live.get("senders") if live else None)}


def daemon_for(cfg, path):
    """(the daemon's status answer or None, the "daemon" dict) for the database at
    `path`: "running" is True, False, or None when that cannot be told (the control
    socket cannot be used, or its daemon serves another database)."""
    daemon = {"running": False, **{key: None for key in _DAEMON_FIELDS}, "error": None}
    try:
        live = ctl_client.ask(cfg, "status")
    except ctl_client.NotRunning as e:
        daemon["error"] = e.why
        return None, daemon
    except ctl_client.ControlError as e:  # it may run: we cannot tell
        daemon.update(running=None, error=str(e))
        return None, daemon
    served = live.get("daemon", {}).get("database")
    if served and not _same_file(served, path):
        daemon.update(running=None, error=f"the tinymqd on {ctl_client.socket_path(cfg)} "
                                          f"serves {served}, not this database")
        return None, daemon
    daemon["running"] = True
    daemon.update({key: live.get("daemon", {}).get(key) for key in _DAEMON_FIELDS})
    return live, daemon


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _is_held(holds, host, port):
    return any(h["host"] == host and h["port"] in (None, port) for h in holds)


def _destination(host, port, **values):
    """A destination's entry in the status (the JSON fields of tinymq(1))."""
    entry = {"host": host, "port": port, "state": None, "held": False, "pending": 0,
             "oldest_age_s": None, "in_flight": None, "rtt_ms": None, "rate_per_s": None,
             "last_error": None}
    entry.update(values)
    return entry


def _destinations(stored, holds, live):
    """One entry per destination (host, port) that has rows, is known to the daemon or
    is held."""
    merged = {(d["host"], d["port"]): _destination(
        d["host"], d["port"], pending=d["pending"], oldest_age_s=d["oldest_age_s"],
        last_error=d["last_error"]) for d in stored}
    for d in live or ():
        key = (d.get("host"), d.get("port"))
        entry = merged.setdefault(key, _destination(*key))
        entry.update(state=d.get("state"), in_flight=d.get("in_flight"),
                     rtt_ms=d.get("rtt_ms"), rate_per_s=d.get("rate_per_s"))
        entry["last_error"] = d.get("last_error") or entry["last_error"]
    for entry in merged.values():
        entry["held"] = _is_held(holds, entry["host"], entry["port"])
        if entry["held"] and entry["state"] is None:
            entry["state"] = "held"
    for h in holds:  # held destinations nothing waits for
        if not any(e["host"] == h["host"] and h["port"] in (None, e["port"])
                   for e in merged.values()):
            merged[(h["host"], h["port"])] = _destination(h["host"], h["port"],
                                                          state="held", held=True)
    return sorted(merged.values(), key=lambda e: (str(e["host"]), str(e["port"])))


def _senders(stored, live):
    """One entry per sending node: what tinymq_rx says, with the daemon's counts of this
    run when it runs (received_this_run; None when it does not)."""
    merged = {s["node"]: {**s, "received_this_run": None} for s in stored}
    for s in live or ():
        entry = merged.setdefault(s.get("node"), {
            "node": s.get("node"), "host": s.get("host"), "port": s.get("port"),
            "received": 0, "last_heard": None, "last_heard_s": None,
            "received_this_run": None})
        entry["received_this_run"] = ((entry["received_this_run"] or 0)
                                      + (s.get("received") or 0))
        heard, known = s.get("last_heard_s"), entry["last_heard_s"]
        if heard is not None and (known is None or heard < known):
            entry.update(host=s.get("host"), port=s.get("port"), last_heard_s=round(heard, 1))
    if live is not None:
        for entry in merged.values():
            entry["received_this_run"] = entry["received_this_run"] or 0
    return sorted(merged.values(), key=lambda e: (e["last_heard_s"] is None,
                                                  e["last_heard_s"] or 0))


# -- text --------------------------------------------------------------------------------

def age(seconds):
    """A short age: 45s, 12m05s, 3h05m, 2d03h; '-' when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def endpoint(host, port):
    """host:port, [v6]:port, host:* for every port."""
    host = "" if host is None else str(host)
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{'*' if port is None else port}"


def _dash(value, fmt="{}"):
    return "-" if value is None else fmt.format(value)


def status_text(st):
    """The status for people, as lines."""
    d = st["daemon"]
    if d["running"]:
        lines = [f"tinymqd: running, pid {d['pid']}, up {age(d['uptime_s'])}, version "
                 f"{d['version']}, node {d['node']}, listening on "
                 f"{endpoint(d['address'], d['port'])}"]
    else:
        state = "not running" if d["running"] is False else "unknown"
        lines = [f"tinymqd: {state} ({d['error']}); figures from the database only; "
                 f"node {d['node'] or '-'}"]
    lines.append(f"database: {d['database']}")
    lines.append("")
    if st["destinations"]:
        lines.append(f"{'DESTINATION':<28} {'STATE':<12} {'PENDING':>8} {'OLDEST':>7} "
                     f"{'IN FLIGHT':>9} {'RTT':>9} {'RATE':>9}  LAST ERROR")
        for e in st["destinations"]:
            lines.append(f"{endpoint(e['host'], e['port']):<28} {_dash(e['state']):<12} "
                         f"{e['pending']:>8} {age(e['oldest_age_s']):>7} "
                         f"{_dash(e['in_flight']):>9} {_dash(e['rtt_ms'], '{:.1f}ms'):>9} "
                         f"{_dash(e['rate_per_s'], '{:.1f}/s'):>9}  "
                         f"{_dash(e['last_error'])}")
    else:
        lines.append("destinations: none (mqout is empty)")
    lines.append("")
    if st["senders"]:
        lines.append(f"{'SENDER NODE':<18} {'FROM':<28} {'RECEIVED':>9} {'THIS RUN':>9}  "
                     f"LAST HEARD")
        for s in st["senders"]:
            heard = "-" if s["last_heard_s"] is None else f"{age(s['last_heard_s'])} ago"
            lines.append(f"{_dash(s['node']):<18} {endpoint(s['host'], s['port']):<28} "
                         f"{s['received']:>9} {_dash(s['received_this_run']):>9}  {heard}")
    else:
        lines.append("senders: none heard from")
    return lines


def queue_text(rows):
    """The lines of a mailq-like listing of mqout rows (dicts of ctl_db.queue_listing)."""
    count = 0
    for row in rows:
        if count == 0:
            yield f"{'X':>10} {'AGE':>7} {'DESTINATION':<28} {'SIZE':>9}  LAST ERROR"
        count += 1
        yield (f"{row['x']:>10} {age(row['age_s']):>7} "
               f"{endpoint(row['host'], row['port']):<28} {row['size']:>9}  "
               f"{_dash(row['last_error'])}")
    yield f"-- {count} message{'' if count == 1 else 's'} in mqout" if count else \
        "mqout is empty"


def to_json(value):
    """One line of JSON."""
    return json.dumps(value, ensure_ascii=False, sort_keys=False)
