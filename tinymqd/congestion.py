"""How fast one stream may send: the window, round-trip time and timeout (RFC 6298),
backoff while the peer is silent, and pacing.

The window grows by 1/GROWTH of itself per round trip, and shrinks once per round trip in
proportion to the fraction of its packets lost (by half that fraction). Random loss
below about 12% (1/16 growth against f/2 decrease) does not shrink it, so a lossy path
keeps most of its throughput; congestion, whose loss rises with the rate, still pushes
it down.
"""

import random

INITIAL_RTO_S = 0.25
MIN_RTO_S = 0.02  # packet numbers make spurious timeouts cheap to tell; waiting is not
INITIAL_CWND = 16.0  # packets
MIN_CWND = 4.0
MAX_CWND = 2048.0
PROBE_CWND = 1.0  # the window while probing a path that may be gone
GROWTH = 16
BETA = 0.7  # the window after a timeout
PACE_BURST = 8  # packets that may leave back to back; then one per RTT / window
PACE_GAIN = 1.25  # pace a little faster than window / RTT, so pacing never limits it
LOSS_DELAY_RTTS = 1.125  # an unacknowledged packet older than this many RTTs is lost
RTO_JITTER = 0.1  # timeouts vary by this fraction, so that streams do not march in step
# RFC 6298's gains for the smoothed round-trip time and its variation, and RTO = SRTT +
# RTTVAR_WEIGHT * RTTVAR.
SRTT_GAIN = 1 / 8
RTTVAR_GAIN = 1 / 4
RTTVAR_WEIGHT = 4


class Congestion:
    __slots__ = ("cwnd", "ssthresh", "round_end", "round_acked", "round_lost", "srtt",
                 "rttvar", "rto", "backoff", "timeouts", "pace_at")

    def __init__(self):
        self.cwnd = INITIAL_CWND
        self.ssthresh = MAX_CWND
        self.round_end = 1  # the round trip ends when this packet number is acknowledged
        self.round_acked = 0
        self.round_lost = 0
        self.srtt = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO_S
        self.backoff = 1.0  # the timeout's multiplier while the peer is silent
        self.timeouts = 0  # in a row, without an acknowledgement in between
        self.pace_at = 0.0  # when the next packet may leave (a window is not one burst)

    def current_rto(self):
        return self.rto * self.backoff

    def jittered_rto(self):
        return self.current_rto() * random.uniform(1 - RTO_JITTER, 1 + RTO_JITTER)

    def loss_delay(self):
        """An unacknowledged packet sent longer ago than this is lost."""
        return LOSS_DELAY_RTTS * (self.srtt or INITIAL_RTO_S)

    def may_send_at(self, now):
        return self.pace_at <= now

    def on_sent(self, now):
        if self.srtt is not None:
            interval = self.srtt / (self.cwnd * PACE_GAIN)
            self.pace_at = max(self.pace_at, now - PACE_BURST * interval) + interval

    def rtt_sample(self, rtt):
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar += RTTVAR_GAIN * (abs(self.srtt - rtt) - self.rttvar)
            self.srtt += SRTT_GAIN * (rtt - self.srtt)
        self.rto = max(MIN_RTO_S, self.srtt + RTTVAR_WEIGHT * self.rttvar)

    def on_acked(self, packets, lost, largest_acked, next_pn):
        """`packets` newly acknowledged and `lost` newly declared lost by an ACK."""
        if packets:
            self.backoff = 1.0
            self.timeouts = 0
            if self.cwnd < self.ssthresh:
                self.cwnd += packets  # slow start
            else:
                self.cwnd += packets / GROWTH
            self.cwnd = min(self.cwnd, MAX_CWND)
        self.round_acked += packets
        self.round_lost += lost
        if largest_acked >= self.round_end:
            if self.round_lost:
                lost_fraction = self.round_lost / (self.round_lost + self.round_acked)
                self.cwnd = max(MIN_CWND, self.cwnd * (1 - lost_fraction / 2))
                self.ssthresh = self.cwnd
            self.round_acked = self.round_lost = 0
            self.round_end = next_pn

    def on_timeout(self, packets_lost, silent, retry_max):
        """A timeout that declared `packets_lost` outstanding packets lost. `silent`: we
        heard nothing from the peer within the last timeout."""
        if packets_lost:
            self.timeouts += 1
            self.ssthresh = max(MIN_CWND, self.cwnd * BETA)
            # A second timeout in a row: the path may be gone; probe with one packet.
            self.cwnd = PROBE_CWND if self.timeouts > 1 and silent else self.ssthresh
        if silent:
            self.backoff = min(self.backoff * 2, max(1.0, retry_max / self.rto))

    def wake(self):
        """The peer is alive again: retry now, not after the backoff."""
        self.backoff = 1.0
        self.cwnd = max(self.cwnd, MIN_CWND)
