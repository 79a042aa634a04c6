"""Paired intervals (issue 18) on constructed results with known answers."""

from __future__ import annotations

import math

import pytest

from migu.metrics import paired_bootstrap, paired_t_interval


def test_paired_t_interval_by_hand() -> None:
    iv = paired_t_interval([0.5, 0.5, 0.5], [0.519, 0.52, 0.521])
    assert iv is not None and iv.mean == pytest.approx(0.02)
    half = 4.302652729911275 * 0.001 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (iv.low, iv.high) == pytest.approx((0.02 - half, 0.02 + half))
    assert iv.excludes_zero and iv.sentence().startswith("MIGU +2.0 points [+1.8, +2.2]")
    noisy = paired_t_interval([0.5, 0.5, 0.5], [0.51, 0.52, 0.53])  # sd 0.01: the t interval holds 0
    assert noisy is not None and not noisy.excludes_zero
    flat = paired_t_interval([0.6, 0.7], [0.6, 0.7])
    assert flat is not None and (flat.low, flat.mean, flat.high) == (0.0, 0.0, 0.0)
    assert flat.sentence().startswith("no difference detected at this size")
    wide = paired_t_interval([0.5, 0.6, 0.7], [0.6, 0.5, 0.71])
    assert wide is not None and not wide.excludes_zero
    assert paired_t_interval([0.5], [0.6]) is None  # one seed: no spread to estimate


def test_paired_bootstrap_known_answers() -> None:
    same = [{"t": [1, 0, 1, 1]}, {"t": [0, 0, 1, 1]}]
    iv = paired_bootstrap(same, same)
    assert (iv.low, iv.mean, iv.high) == (0.0, 0.0, 0.0)
    worse = [{"a": [1] * 10, "b": [1] * 5}]
    better = [{"a": [0] * 10, "b": [0] * 5}]
    iv = paired_bootstrap(worse, better)  # every row lost: exactly -1 in every replicate
    assert (iv.low, iv.mean, iv.high) == (-1.0, -1.0, -1.0)
    # one row of 200 flipped right: the point is +0.5 points, the interval holds it and is narrow
    a = [{"t": [0] * 100 + [1] * 100}]
    b = [{"t": [1] + [0] * 99 + [1] * 100}]
    iv = paired_bootstrap(a, b, n_boot=4000)
    assert iv.mean == pytest.approx(0.005) and iv.low <= 0.005 <= iv.high and iv.high - iv.low < 0.03
    with pytest.raises(ValueError, match="different rows"):
        paired_bootstrap([{"t": [1, 0]}], [{"t": [1]}])
