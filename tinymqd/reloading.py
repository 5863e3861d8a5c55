"""Reading the configuration again while running (SIGHUP; `tinymq reload`, which is what
systemctl reload runs): what may change while running is applied to the workers; a bad
file keeps the running configuration."""

import dataclasses
import logging
import os
import threading

from tinymqd import config, control, events, logsetup

log = logging.getLogger("tinymqd")


class Reloading:
    def __init__(self, daemon):
        self.daemon = daemon
        self.lock = threading.Lock()  # one reload at a time (SIGHUP, tinymq reload)

    def request(self, _request):
        """`tinymq reload` (systemd's ExecReload): on the control thread, so it answers
        once the new configuration runs, or with why the file was refused."""
        error = self.reload()
        if error:
            raise control.RequestError(f"reload failed, the running configuration stays: "
                                       f"{error}")
        return {"config": self.daemon.cfg.source}

    def reload(self):
        """Read the configuration again and apply what can change while running: log
        level, retry cap, keys, peers, require_key, allow. A bad file keeps the running
        configuration: one line says why, which is returned (else None). Host names in
        peers are looked up afterwards, off this thread (a slow name server must not
        hold up the watchdog or a stop)."""
        d = self.daemon
        with self.lock:
            d.notifier.notify("RELOADING=1")
            try:
                problem = self._apply(d.load_config())
            except Exception as e:  # noqa: BLE001 - ConfigError, or what it missed
                problem = str(e) if isinstance(e, config.ConfigError) else \
                    f"{d.cfg.source}: {type(e).__name__}: {e}"
            if problem:
                log.error("reload failed, the running configuration stays: %s", problem)
                d.notifier.notify("READY=1")
                return problem
            for note in d.cfg.notes:
                log.warning("%s", note)
            log.info("configuration reloaded from %s", d.cfg.source)
            d.notifier.notify("READY=1\nSTATUS=" + d.status_line())
        threading.Thread(target=d.refresh_peers, name="peers", daemon=True).start()
        return None

    def _apply(self, new):
        """Run with the new Config (what can change while running); a problem, or None."""
        d = self.daemon
        if new.source != "built-in defaults" and os.path.getsize(new.source) == 0 and \
                dataclasses.replace(new, source=d.cfg.source) != d.cfg:
            # All defaults, keys gone: far more likely a file caught while being written.
            return f"{new.source}: is empty (being written?); write the defaults out to " \
                   f"run with them"
        fixed = [key for key in config.NEEDS_RESTART
                 if getattr(new, key) != getattr(d.cfg, key)]
        if fixed:
            log.warning("%s changed in %s: takes effect at the next restart "
                        "(systemctl restart tinymq)", ", ".join(fixed), new.source)
        new = dataclasses.replace(new, **{key: getattr(d.cfg, key)
                                          for key in config.NEEDS_RESTART})
        peer_keys = new.peer_keys()
        peer_keys.carry_over(d.peer_keys)
        d.cfg, d.peer_keys = new, peer_keys
        logsetup.set_level(new.log_level)
        d.gate.reconfigure(peer_keys, new.keys_required, new.allow)
        d.inbound.keys = new.keys or {}
        d.scheduler.inbox.put(events.Reconfigured(new, peer_keys))
        return None
