"""KMEx's discovery step (Gautam et al., TMLR 2024): k-means prototypes per class on frozen embeddings.

The embedding of an image is the black box's pooled feature vector z = mean_j f_j, the vector its
linear head reads (KMEx takes the encoder's output before the classifier). It is pooled from the
class batch decompose already holds on the device, so KMEx costs no extra pass over the data. Per class, scikit-learn's KMeans (k-means++, `n_init`
restarts, seeded) clusters the class's training embeddings; the k centres are the prototypes. As in
the reference code (SrishtiGautam/KMEx, utils/common.py), each prototype is shown as the class's
training image whose embedding is nearest to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from proto_lightning.errors import ConfigValueError
from proto_lightning.prototypes.features import ClassBatch


@dataclass(frozen=True)
class KMeansSettings:
    """`kmex` settings of the discovery: prototypes per class, restarts and iterations of k-means."""

    prototypes_per_class: int = 3
    n_init: int = 10
    max_iter: int = 300


def image_embeddings(batch: ClassBatch) -> list[np.ndarray]:
    """Each class's image embeddings z = mean_j f_j (the head's input), (n_c, D) float64, from a
    resident class batch (pooled on its device)."""
    hw = batch.map_size[0] * batch.map_size[1]
    C_b, N, D = batch.F.shape
    pooled = batch.F.view(C_b, N // hw, hw, D).double().mean(2).cpu().numpy()  # (C_b, n_max, D)
    return [pooled[i, : n // hw] for i, n in enumerate(batch.counts)]


def centres_of(X: np.ndarray, c: int, settings: KMeansSettings, seed: int) -> torch.Tensor:
    """k-means centres (k, D) of class c's embeddings X (n_c, D), seeded by `seed + c`."""
    k = settings.prototypes_per_class
    if len(X) < k:
        raise ConfigValueError(
            f"class {c} has {len(X)} training images, fewer than kmex.prototypes_per_class={k}: "
            "lower it or add images"
        )
    kmeans = KMeans(k, n_init=settings.n_init, max_iter=settings.max_iter, random_state=seed + c)
    return torch.from_numpy(kmeans.fit(np.asarray(X, dtype=np.float64)).cluster_centers_).float()
