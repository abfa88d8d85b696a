"""Bootstrap intervals: degenerate data, normal-theory width, an interval known exactly."""

import numpy as np
import pytest
from scipy.stats import binom

from proto_lightning.evaluation.per_image import MethodValues, RunValues
from proto_lightning.metrics.bootstrap import bootstrap_estimate


def mean_estimate(values, **bootstrap):
    """A per-image mean's table cell, as evaluate computes it (`RunValues.estimates`)."""
    run = RunValues({}, 1, 0.8, None, {"m": MethodValues({"x": np.asarray(values)})})
    return run.estimates("m", **bootstrap)["x"]


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


def test_interval_is_the_exact_percentile_interval_of_a_resampled_share():
    """4 of 27 images hit: a resample's share is Binomial(27, 4/27) / 27, so the 95% percentile
    interval is its 2.5% and 97.5% quantiles, 1/27 and 8/27 (90% would give 7/27 above, 97.5%
    0/27 below and 9/27 above; an interval mirrored about the estimate, 0/27 and 7/27)."""
    hits = np.zeros(27)
    hits[:4] = 1.0
    low, high = (binom.ppf(q, 27, 4 / 27) / 27 for q in (0.025, 0.975))
    assert (low, high) == (1 / 27, 8 / 27)  # the reference, from scipy's binomial quantiles
    e = bootstrap_estimate(lambda idx: float(hits[idx].mean()), 27, resamples=20000, seed=3)
    assert (e.value, e.low, e.high) == pytest.approx((4 / 27, low, high), abs=1e-12)
    assert mean_estimate(hits, resamples=20000) == e.__class__(4 / 27, low, high)


def test_two_images_already_have_an_interval():
    """Two values 0 and 1: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the
    95% interval is [0, 1]; one image has no spread to resample."""
    e = mean_estimate(np.array([0.0, 1.0]), resamples=2000)
    assert (e.value, e.low, e.high) == (0.5, 0.0, 1.0)
    single = mean_estimate(np.array([0.25]))
    assert (single.value, single.low, single.high) == (0.25, 0.25, 0.25)


def test_an_undefined_statistic_has_no_interval():
    """A statistic that is NaN on all images (e.g. stability of a class without test images) is reported
    as NaN without resampling."""
    calls = []
    e = bootstrap_estimate(lambda idx: calls.append(idx) or float("nan"), 10)
    assert all(np.isnan(v) for v in (e.value, e.low, e.high)) and len(calls) == 1
