"""Mean and 95% bootstrap interval of a statistic over images (scipy.stats.bootstrap, percentile method)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap


@dataclass(frozen=True)
class Estimate:
    """A statistic on all images and its bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def bootstrap_estimate(
    statistic: Callable[[np.ndarray], float],
    num_images: int,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """`statistic(image_indices)` on all images, and its percentile interval over image resamples."""
    indices = np.arange(num_images)
    value = float(statistic(indices))
    if num_images < 2 or not np.isfinite(value):
        return Estimate(value, value, value)
    result = bootstrap(
        (indices,),
        lambda idx: float(statistic(idx.astype(np.int64))),
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=False,
        random_state=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return Estimate(value, float(interval.low), float(interval.high))


def mean_estimate(values: np.ndarray, **kwargs) -> Estimate:
    """Mean of per-image values (N,) with its bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    return bootstrap_estimate(lambda idx: values[idx].mean(), len(values), **kwargs)
