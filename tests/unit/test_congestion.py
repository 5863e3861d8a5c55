"""The window, round-trip time and backoff of one stream."""

import pytest

from tinymqd.congestion import (BETA, INITIAL_CWND, MAX_CWND, MIN_CWND, MIN_RTO_S, PROBE_CWND,
                                Congestion)


def test_slow_start_doubles_per_round_then_growth_is_gentle():
    cc = Congestion()
    cc.on_acked(16, 0, 1, 17)
    assert cc.cwnd == INITIAL_CWND + 16
    cc.ssthresh = cc.cwnd
    before = cc.cwnd
    cc.on_acked(16, 0, 17, 33)
    assert cc.cwnd == pytest.approx(before + 1)  # 1/16 of a window per round trip


def test_random_loss_shrinks_the_window_by_half_the_lost_fraction():
    cc = Congestion()
    cc.cwnd = cc.ssthresh = 100.0
    cc.on_acked(90, 10, 101, 201)  # the round ends with 10% lost
    assert cc.cwnd == pytest.approx((100 + 90 / 16) * 0.95)
    assert cc.cwnd >= MIN_CWND


def test_the_window_stays_within_its_bounds():
    cc = Congestion()
    for _ in range(100):
        cc.on_acked(1000, 0, 1, 2)
    assert cc.cwnd == MAX_CWND
    cc = Congestion()
    cc.cwnd = cc.ssthresh = MIN_CWND
    cc.on_acked(1, 99, 1, 2)  # a round with 99% lost
    assert cc.cwnd == MIN_CWND


def test_timeouts_back_off_to_retry_max_and_leave_one_probe():
    cc = Congestion()
    cc.on_timeout(10, silent=True, retry_max=1.0)
    assert cc.cwnd == pytest.approx(INITIAL_CWND * BETA)
    cc.on_timeout(1, silent=True, retry_max=1.0)
    assert cc.cwnd == PROBE_CWND
    for _ in range(20):
        cc.on_timeout(1, silent=True, retry_max=1.0)
    assert cc.current_rto() == pytest.approx(1.0)
    cc.wake()
    assert cc.backoff == 1.0 and cc.cwnd >= MIN_CWND


def test_a_peer_that_answers_is_not_backed_off():
    cc = Congestion()
    cc.on_timeout(5, silent=False, retry_max=1.0)
    assert cc.backoff == 1.0


def test_rto_follows_rfc_6298_and_has_a_floor():
    cc = Congestion()
    cc.rtt_sample(0.1)
    assert cc.srtt == 0.1 and cc.rto == pytest.approx(0.1 + 4 * 0.05)
    for _ in range(200):
        cc.rtt_sample(0.0001)
    assert cc.rto == MIN_RTO_S
