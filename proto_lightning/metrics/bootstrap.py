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
    """A statistic on all images, and its percentile interval over image resamples
    (`scipy.stats.bootstrap`).

    Args:
        statistic: image indices (n,) -> the metric on those images.
        num_images: how many images there are.
        resamples: bootstrap resamples.
        confidence: the interval's level.
        seed: the resampling's seed.

    Returns:
        `Estimate(value, low, high)`; one image, or a statistic that is not finite, has no interval.

    Example:
        >>> hits = np.array([1.0, 0.0, 1.0, 1.0])
        >>> e = bootstrap_estimate(lambda idx: hits[idx].mean(), 4, resamples=200)
        >>> e.value, e.low <= e.value <= e.high
        (0.75, True)
    """
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
