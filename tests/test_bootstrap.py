"""Bootstrap intervals: degenerate data, normal-theory width, a statistic over resampled images."""

import numpy as np
import pytest

from proto_lightning.metrics.bootstrap import bootstrap_estimate, mean_estimate


def test_constant_values_have_a_point_interval():
    e = mean_estimate(np.ones(50))
    assert (e.value, e.low, e.high) == (1.0, 1.0, 1.0)


def test_interval_of_a_mean_matches_normal_theory():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=400)
    e = mean_estimate(values, resamples=2000)
    assert e.value == pytest.approx(values.mean())
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values))  # = 0.196
    assert e.low < values.mean() < e.high
    assert (e.high - e.low) / 2 == pytest.approx(half_width, rel=0.15)


def test_any_statistic_of_image_indices():
    labels = np.array([0, 0, 1, 1, 1, 1])
    e = bootstrap_estimate(lambda idx: float((labels[idx] == 1).mean()), len(labels), resamples=200)
    assert e.value == pytest.approx(4 / 6) and 0.0 <= e.low <= e.value <= e.high <= 1.0
