"""Assertions about what arrived: exactly once, in order."""

import collections


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
