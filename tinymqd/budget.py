"""Memory for what peers send, charged to whoever sends it: one budget for all and one
per source address. Every stream, partial message, fragment and message waiting for
the disk costs a fixed overhead besides its bytes, so that many empty or tiny pieces
cost as much as they really do."""

STREAM_COST = 8192  # bytes charged for a stream's state (with its packet ranges)
PARTIAL_COST = 256  # ... for a message whose fragments are arriving
FRAGMENT_COST = 96  # ... for each fragment held
MESSAGE_COST = 160  # ... for a whole message waiting for an earlier one or the disk


class Budget:
    """Used under the caller's lock. `total_limit` bounds everything; `source_limit`
    what one address may hold. The next message in order of a stream may go
    `source_limit` beyond the total (else a full budget could wait for it for ever),
    never beyond its source's share."""

    def __init__(self, total_limit, source_limit):
        self.total_limit = total_limit
        self.source_limit = source_limit
        self.total = 0
        self.by_source = {}

    def fits(self, source, cost, next_in_order=False):
        if self.by_source.get(source, 0) + cost > self.source_limit:
            return False
        limit = self.total_limit + (self.source_limit if next_in_order else 0)
        return self.total + cost <= limit

    def charge(self, source, cost):
        self.total += cost
        self.by_source[source] = self.by_source.get(source, 0) + cost

    def release(self, source, cost):
        self.total -= cost
        left = self.by_source.get(source, 0) - cost
        if left > 0:
            self.by_source[source] = left
        else:
            self.by_source.pop(source, None)
