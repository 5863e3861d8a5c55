"""Where destinations are: resolves names off the scheduler thread, again every minute
and after failures, and tells the admin (log, last_error) when a destination does not
resolve, stops answering, or comes back."""

import collections
import concurrent.futures
import datetime
import logging
import time

from tinymqd import events, transport
from tinymqd.logsetup import fields

log = logging.getLogger("tinymqd.scheduler")

RESOLVER_THREADS = 4  # a slow name server delays at most this many lookups at once
RESOLVE_RETRY_FIRST_S = 1.0  # wait before resolving a name again after a failure ...
RESOLVE_RETRY_MAX_S = 60.0  # ... doubling up to this
RERESOLVE_INTERVAL_S = 60.0  # names are looked up again this often (addresses move)


PAST_RUNS = 16  # run ids of a destination remembered, to ignore replayed HELLOs


class Endpoint:
    """The address of one destination (host, port), the state of resolving it, and what
    the peer there gave us: its cookie and keys."""

    __slots__ = ("host", "port", "name", "addr", "addrs", "error", "resolving",
                 "next_resolve", "retry_wait", "cookie", "key", "key_names", "past_runs",
                 "heard", "not_taken")

    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.name = transport.format_endpoint(host, port)
        self.addr = None  # the socket address datagrams go to, once known ...
        self.addrs = ()  # ... one of all the name has (tried in turn while none answers)
        self.error = None  # why the last lookup failed
        self.resolving = False
        self.next_resolve = 0.0
        self.retry_wait = 0.0
        self.cookie = 0  # what our DATA must echo (the peer's HELLO tells it)
        self.key = None  # (name, key) that seals what we send; None: unsealed
        self.key_names = frozenset()  # the keys its answers may be sealed with
        self.past_runs = collections.deque(maxlen=PAST_RUNS)
        self.heard = None  # (node, ip) of the last HELLO taken
        self.not_taken = None  # (node, ip) of another host's HELLO, last said in the log

    def choose_keys(self, peer_keys):
        """The keys for this destination, by its name or address (keys.PeerKeys)."""
        pairs = peer_keys.for_destination(self.host, self.addr[0] if self.addr else None)
        self.key = pairs[0] if pairs else None
        self.key_names = frozenset(name for name, _ in pairs)

    def heard_run(self, run):
        if run not in self.past_runs:
            self.past_runs.append(run)

    def take_hello(self, hello, our_run, tag):
        """Whether a HELLO naming one of our streams is a real answer: sealed as we seal,
        echoing our run and the stream's tag (an answer to our DATA), or announcing a
        start with a run not seen before (tag 0: a replayed old one changes nothing).
        Takes its cookie."""
        header = hello.header
        answer = header.peer_run == our_run and hello.tag == tag
        announce = header.peer_run == 0 and hello.tag == 0 and header.run not in self.past_runs
        if not (answer or announce) or not self.answers_with_right_key(header.key):
            return False
        self.heard_run(header.run)
        if hello.cookie:
            self.cookie = hello.cookie
        return True

    def other_host(self, node, ip):
        """Whether a HELLO of `node` from `ip` comes from another host behind our name
        (one with several addresses) than the node we talk to: taking it would send what
        that node may already hold to a second one. (The same address naming another
        node is the same host with its database replaced.)"""
        return len(self.addrs) > 1 and self.heard is not None and \
            node != self.heard[0] and ip != self.heard[1]

    def answers_with_right_key(self, key_name):
        """An answer sealed as we seal to it (or unsealed, when we do not seal)."""
        return key_name in self.key_names if self.key else key_name is None

    @property
    def is_name(self):
        return transport.literal_address(self.host) is None


class AddressBook:
    """Resolution for the scheduler. Lookups of names run on a small thread pool; their
    results come back through the inbox as events.AddressResolved. Methods that may set
    an address return True when they did (the caller then sends)."""

    def __init__(self, family, inbox, show_error):
        self.family = family
        self.inbox = inbox
        self.show_error = show_error  # show_error(destination, text or None)
        self.pool = concurrent.futures.ThreadPoolExecutor(RESOLVER_THREADS, "resolver")

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)

    def need(self, dest):
        """Make sure the destination's address is known or being looked up."""
        ep = dest.endpoint
        if ep.addr is not None or ep.resolving:
            return False
        if not ep.is_name:  # an IP literal: no lookup to wait for
            try:
                ep.addrs = tuple(transport.resolve_all(ep.host, ep.port, self.family))
                ep.addr = ep.addrs[0]
            except OSError as e:
                self._unresolved(dest, str(e))
                return False
            return True
        self._look_up(dest)
        return False

    def _look_up(self, dest):
        ep = dest.endpoint
        ep.resolving = True
        future = self.pool.submit(transport.resolve_all, ep.host, ep.port, self.family)
        future.add_done_callback(
            lambda f, i=dest.id: self.inbox.put(events.AddressResolved(i, f)))

    def on_resolved(self, dest, future):
        ep = dest.endpoint
        ep.resolving = False
        try:
            addrs = tuple(future.result())
        except concurrent.futures.CancelledError:
            return False
        except (OSError, UnicodeError) as e:
            self._unresolved(dest, getattr(e, "strerror", None) or str(e))
            return False
        addr = ep.addr if ep.addr in addrs else addrs[0]  # keep the one that answers
        if ep.error:
            log.info("host %s resolves again (%s)", ep.name, addr[0],
                     extra=fields(peer=ep.name))
            ep.error = None
            self.show_error(dest, None)
        elif ep.addr is not None and ep.addr[:2] != addr[:2]:
            log.info("destination %s moved from %s to %s", ep.name, ep.addr[0], addr[0],
                     extra=fields(peer=ep.name))
        ep.addr, ep.addrs = addr, addrs
        ep.next_resolve = time.monotonic() + RERESOLVE_INTERVAL_S
        return True

    @staticmethod
    def try_next(dest):
        """The destination does not answer: when its name has several addresses (a
        host with IPv6 and IPv4, or several of either), move on to the next one. True
        when the address changed."""
        ep = dest.endpoint
        if len(ep.addrs) < 2 or ep.addr not in ep.addrs:
            return False
        ep.addr = ep.addrs[(ep.addrs.index(ep.addr) + 1) % len(ep.addrs)]
        log.debug("destination %s does not answer; trying its address %s", ep.name,
                  ep.addr[0], extra=fields(peer=ep.name))
        return True

    def _unresolved(self, dest, reason):
        ep = dest.endpoint
        wait = RESOLVE_RETRY_FIRST_S if ep.error is None else min(
            RESOLVE_RETRY_MAX_S, 2 * max(RESOLVE_RETRY_FIRST_S, ep.retry_wait))
        ep.retry_wait = wait
        ep.next_resolve = time.monotonic() + wait
        if ep.error is None and ep.addr is None:
            log.warning("cannot resolve destination %s: %s; rows wait and it is tried again",
                        ep.name, reason, extra=fields(peer=ep.name))
        ep.error = reason
        if ep.addr is None:
            self.show_error(dest, f"host {ep.host!r} does not resolve ({reason}); retrying")

    def refresh(self, dests, now):
        """Look up again the names of destinations with rows waiting: those that did not
        resolve, when their retry is due, and the others every minute."""
        for dest in dests:
            ep = dest.endpoint
            if ep.resolving or ep.next_resolve > now or (ep.addr is not None
                                                          and not ep.is_name):
                continue
            if ep.addr is None:
                self.need(dest)
            else:
                self._look_up(dest)

    def unreachable(self, dest, waiting_since, now, retry_max):
        """The destination has not answered since `waiting_since` (monotonic)."""
        ep = dest.endpoint
        since = datetime.datetime.now().astimezone() - datetime.timedelta(
            seconds=now - waiting_since)
        if ep.key is None:
            problem = f"no answer from {ep.name} since {since:%Y-%m-%d %H:%M:%S %z}"
        else:
            problem = (f"no answer sealed with key '{ep.key[0]}' from {ep.name} since "
                       f"{since:%Y-%m-%d %H:%M:%S %z}: the peer does not answer sealed "
                       f"traffic (check that both have this key in key_file and peers)")
        log.warning("destination %s is not answering%s; retrying every %.1f s", ep.name,
                    "" if ep.key is None else f" traffic sealed with key '{ep.key[0]}' "
                    f"(check the keys on both sides)", retry_max, extra=fields(peer=ep.name))
        self.show_error(dest, f"{problem}; retrying")

    def back(self, dest):
        log.info("destination %s is back", dest.endpoint.name,
                 extra=fields(peer=dest.endpoint.name))
        self.show_error(dest, None)
