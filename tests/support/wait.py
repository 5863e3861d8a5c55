"""Waiting on conditions with a deadline (never a bare fixed sleep)."""

import time


class WaitTimeout(AssertionError):
    """A condition did not become true before its deadline."""


# Callables run on every poll of wait_until/holds_for; they raise to end a wait early
# (e.g. tests.support.daemon registers one that fails as soon as a daemon has died).
CHECKS = []


def add_check(fn):
    if fn not in CHECKS:
        CHECKS.append(fn)


def _run_checks():
    for fn in CHECKS:
        fn()


def wait_until(predicate, timeout, msg, interval=0.02, describe=None):
    """Call predicate() until it returns a truthy value; return that value.

    Fails (AssertionError) after `timeout` seconds with `msg`, plus what
    describe() says about the last state when given (e.g. queue sizes).
    Exceptions raised by predicate propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        _run_checks()
        if time.monotonic() >= deadline:
            detail = ""
            if describe is not None:
                try:
                    detail = f" [{describe()}]"
                except Exception as exc:  # the description must not hide the timeout
                    detail = f" [describe() failed: {exc!r}]"
            raise WaitTimeout(f"timed out after {timeout:.1f} s: {msg}{detail}")
        time.sleep(interval)


def holds_for(predicate, duration, msg, interval=0.05, describe=None):
    """Assert that predicate() stays truthy for `duration` seconds."""
    deadline = time.monotonic() + duration
    while True:
        _run_checks()
        value = predicate()
        if not value:
            detail = f" [{describe()}]" if describe is not None else ""
            raise AssertionError(f"condition broke before {duration:.1f} s had passed: "
                                 f"{msg}{detail}")
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)
