"""Assertions about what arrived: exactly once, in order."""

import collections

from tests.support import db as dbmod
from tests.support.wait import holds_for, wait_until


def series_problems(numbers, expected):
    """Describe how `numbers` (as received, in mqin order) differs from `expected` (the
    sender's order). Returns '' when they are equal."""
    expected = list(expected)
    if list(numbers) == expected:
        return ""
    counts = collections.Counter(numbers)
    want = set(expected)
    dups = sorted(n for n, c in counts.items() if c > 1)
    missing = sorted(want - set(counts))
    extra = sorted(set(counts) - want)
    problems = [f"received {len(numbers)} rows, {len(counts)} distinct, expected {len(expected)}"]
    if missing:
        problems.append(f"{len(missing)} missing (first {missing[:8]})")
    if dups:
        problems.append(f"{len(dups)} duplicated (first {dups[:8]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (first {extra[:8]})")
    order = {n: i for i, n in enumerate(expected)}
    seen = [n for n in numbers if n in order]
    for i in range(1, len(seen)):
        if order[seen[i]] < order[seen[i - 1]]:
            problems.append(f"out of order: {seen[i]} after {seen[i - 1]} at position {i}")
            break
    return "; ".join(problems)


def assert_exactly_once_in_order(numbers, expected, what="messages"):
    problems = series_problems(numbers, expected)
    assert not problems, f"{what}: not exactly once in order: {problems}"


def handoff_problems(sender, receiver, tag, enqueued):
    """The durable hand-off so far, for messages '<tag>-<i>' i = 1..enqueued from the
    Daemon `sender` to the Daemon `receiver`: the receiver's mqin holds exactly 1..k in
    order, and every row gone from the sender's mqout is among them (nothing was
    acknowledged before it was committed). The sender is read first: its rows leave only
    after the receiver has stored them. Returns '' when all is well."""
    pending = set(dbmod.series_numbers(sender.db, tag, table="mqout"))
    got = dbmod.series_numbers(receiver.db, tag)
    problems = series_problems(got, range(1, len(got) + 1))
    if problems:
        return f"{tag}: receiver's mqin is not 1..{len(got)}: {problems}"
    lost = sorted(set(range(1, enqueued + 1)) - pending - set(got))
    if lost:
        return (f"{tag}: {len(lost)} rows left the sender's mqout but are not in the "
                f"receiver's mqin (first {lost[:8]})")
    return ""


def assert_handoff(sender, receiver, tag, enqueued):
    """handoff_problems() as an assertion; True when all is well (for holds_for)."""
    problems = handoff_problems(sender, receiver, tag, enqueued)
    assert not problems, problems
    return True


def assert_series_delivered(sender, receiver, tag, total, timeout, consumed=()):
    """Every message '<tag>-<i>' i = 1..total arrives exactly once, in order: the sender's
    mqout has none left, the receiver's mqin has them all and no more come late.
    `consumed` are the numbers a consumer has already read and deleted from that mqin."""
    consumed = list(consumed)
    left = total - len(consumed)
    wait_until(lambda: sender.count("mqout", "token=?", (tag,)) == 0 and
               receiver.count("mqin", "token=?", (tag,)) >= left, timeout,
               f"{tag}: all {total} delivered",
               describe=lambda: dbmod.describe_queues(sender.db, receiver.db))
    holds_for(lambda: receiver.count("mqin", "token=?", (tag,)) == left, 1.0,
              f"{tag}: no late duplicates")
    assert_exactly_once_in_order(consumed + dbmod.series_numbers(receiver.db, tag),
                                 range(1, total + 1), tag)
