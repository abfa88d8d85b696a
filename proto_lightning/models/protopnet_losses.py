"""ProtoPNet's loss terms, as the official code computes them (cfchen-duke/ProtoPNet, train_and_test.py).

All take min_distances (B, m): the smallest squared L2 distance of each prototype to any patch of
each image, and the one-hot prototype class identity (m, C). The cluster and separation costs use
the official "max-distance trick": max_dist = prototype length, and the masked maximum of
(max_dist - d) picks the nearest (own-class or other-class) prototype.
"""

from __future__ import annotations

import torch


def cluster_cost(
    min_distances: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor, max_dist: float
) -> torch.Tensor:
    """Mean over images of the distance to the nearest prototype of the image's own class."""
    own = identity[:, labels].T  # (B, m) 1 where the prototype belongs to the image's class
    inverted, _ = ((max_dist - min_distances) * own).max(dim=1)
    return (max_dist - inverted).mean()


def separation_cost(
    min_distances: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor, max_dist: float
) -> torch.Tensor:
    """Mean over images of the distance to the nearest prototype of any other class (weighted by -0.08)."""
    other = 1 - identity[:, labels].T  # (B, m)
    inverted, _ = ((max_dist - min_distances) * other).max(dim=1)
    return (max_dist - inverted).mean()


def last_layer_l1(weight: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """L1 norm of the last-layer weights (C, m) connecting prototypes to classes other than their own."""
    return (weight * (1 - identity.T)).norm(p=1)
