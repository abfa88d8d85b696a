"""KMEx's discovery step (Gautam et al., TMLR 2024): k-means prototypes per class on frozen embeddings.

The embedding of an image is the black box's pooled feature vector z = mean_j f_j, the vector its
linear head reads (KMEx takes the encoder's output before the classifier). It is read from the
feature store decompose already holds, whose rows are each image's H W patch vectors in order, so
KMEx costs no extra pass over the data. Per class, scikit-learn's KMeans (k-means++, `n_init`
restarts, seeded) clusters the class's training embeddings; the k centres are the prototypes. As in
the reference code (SrishtiGautam/KMEx, utils/common.py), each prototype is shown as the class's
training image whose embedding is nearest to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from proto_lightning.errors import ConfigValueError
from proto_lightning.prototypes.features import FeatureStore


@dataclass(frozen=True)
class KMeansSettings:
    """`kmex` settings of the discovery: prototypes per class, restarts and iterations of k-means."""

    prototypes_per_class: int = 3
    n_init: int = 10
    max_iter: int = 300


def image_embeddings(store: FeatureStore) -> FeatureStore:
    """The store with one row per image: its pooled vector z = mean_j f_j (the head's input),
    at location (0, 0) of a 1 x 1 map."""
    hw = store.map_size[0] * store.map_size[1]
    features = np.asarray(store.features).reshape(-1, hw, store.features.shape[1]).mean(1)
    first = slice(0, None, hw)  # each image's first patch row carries its row, id and label
    return FeatureStore(
        features=features.astype(np.float32),
        rows=store.rows[first],
        image_ids=store.image_ids[first],
        locations=np.zeros((len(features), 2), dtype=np.int64),
        labels=store.labels[first],
        offsets=store.offsets // hw,
        map_size=(1, 1),
    )


def class_centres(
    embeddings: FeatureStore, classes: Iterable[int], settings: KMeansSettings, seed: int
) -> torch.Tensor:
    """k-means centres (len(classes), k, D) of each class's embeddings, seeded per class."""
    k, centres = settings.prototypes_per_class, []
    for c in classes:
        X = np.asarray(embeddings.class_slice(c), dtype=np.float64)  # (n_c, D)
        if len(X) < k:
            raise ConfigValueError(
                f"class {c} has {len(X)} training images, fewer than kmex.prototypes_per_class={k}: "
                "lower it or add images"
            )
        kmeans = KMeans(
            k, n_init=settings.n_init, max_iter=settings.max_iter, random_state=seed + c
        )
        centres.append(torch.from_numpy(kmeans.fit(X).cluster_centers_).float())
    return torch.stack(centres)
