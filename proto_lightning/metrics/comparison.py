"""Comparing methods and runs: the paired bootstrap over shared test images (within one run) and
mean, standard deviation, t-interval and paired t-test over runs (seeds).

The paired bootstrap follows Efron & Tibshirani (1993, ch. 16): both methods' statistics are
computed on the same resampled images, so the difference's interval reflects only how the two
differ image by image. Its two-sided p-value is the share of resampled differences on the far side
of zero, doubled (the percentile test; ch. 16.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

Statistic = Callable[[np.ndarray], float]  # image indices (n,) -> the metric on those images


@dataclass(frozen=True)
class Difference:
    """A paired difference `a - b` of two methods' metric, its interval and two-sided p-value.

    `test` says how it was measured: `paired bootstrap` (over the images of one run) or
    `paired t-test` (over runs)."""

    value: float
    low: float
    high: float
    p_value: float
    n: int  # images (bootstrap) or runs (t-test)
    test: str
    resamples: int = 0  # the bootstrap's: its p-value is a multiple of 1 / resamples

    def p_text(self) -> str:
        """The p-value as a table shows it: `< 1/resamples` for a bootstrap's 0, `–` when none."""
        if math.isnan(self.p_value):
            return "–"
        if self.p_value == 0 and self.resamples:
            return f"< {1 / self.resamples:.2g}"
        return f"= {self.p_value:.3g}"


@dataclass(frozen=True)
class Summary:
    """A metric over runs: mean, sample standard deviation (ddof 1), t-interval of the mean."""

    mean: float
    sd: float
    low: float
    high: float
    n: int


def bootstrap_indices(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, num_images) image indices drawn with replacement, one resample per row."""
    return np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))


def paired_bootstrap(
    statistic_a: Statistic, statistic_b: Statistic, indices: np.ndarray, confidence: float = 0.95
) -> Difference:
    """`a - b` on all images, its percentile interval and p-value over the resamples `indices`
    (rows of image indices, e.g. `bootstrap_indices`), both methods on the same rows.

    Example:
        >>> a, b = np.array([1.0, 0.0]), np.array([0.0, 3.0])
        >>> rows = np.array([[0, 0], [0, 1], [1, 1]])
        >>> paired_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), rows).value
        -1.0
    """
    n = indices.shape[1]
    everything = np.arange(n)
    value = float(statistic_a(everything) - statistic_b(everything))
    diffs = np.array([statistic_a(row) - statistic_b(row) for row in indices], dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return Difference(value, value, value, float("nan"), n, "paired bootstrap", len(indices))
    alpha = 1.0 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p_value = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return Difference(
        value, float(low), float(high), float(p_value), n, "paired bootstrap", len(indices)
    )


def summarise(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sd and the Student-t interval of the mean over runs; one run has sd and interval NaN.

    Example:
        >>> s = summarise([0.90, 0.92, 0.94])
        >>> round(s.mean, 2), round(s.sd, 2)
        (0.92, 0.02)
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return Summary(mean, float("nan"), float("nan"), float("nan"), n)
    sd = float(x.std(ddof=1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n)
    return Summary(mean, sd, float(mean - half), float(mean + half), n)


def paired_over_runs(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Difference:
    """Mean of the per-run differences `a - b`, its t-interval and the paired t-test's p-value
    (runs paired by seed); a zero-variance difference has p 1 when it is 0, else 0."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    summary = summarise(d, confidence)
    if len(d) < 2:
        p_value = float("nan")
    elif summary.sd == 0:
        p_value = 1.0 if summary.mean == 0 else 0.0
    else:
        p_value = float(stats.ttest_1samp(d, 0.0).pvalue)
    low, high = (summary.mean, summary.mean) if summary.sd == 0 else (summary.low, summary.high)
    return Difference(summary.mean, low, high, p_value, len(d), "paired t-test")
