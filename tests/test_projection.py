"""The shared nearest-patch module equals a brute-force torch search, with and without class restriction."""

import numpy as np
import pytest
import torch

from proto_lightning.prototypes.projection import NearestPatchIndex, merge_nearest


def patches(seed: int = 0, n_images: int = 40, hw: int = 9, dim: int = 16, classes: int = 4):
    rng = np.random.default_rng(seed)
    features = np.maximum(rng.standard_normal((n_images * hw, dim)), 0).astype(np.float32)
    image_labels = rng.integers(0, classes, n_images)
    labels = np.repeat(image_labels, hw)
    rows = np.repeat(np.arange(n_images) * 3 + 7, hw)  # dataset rows need not be 0..n-1
    image_ids = rows + 1000
    locations = np.tile(np.stack(np.divmod(np.arange(hw), 3), 1), (n_images, 1))
    return features, labels, rows, image_ids, locations


def brute_force(queries, features, labels, query_classes, metric):
    q, f = torch.from_numpy(queries).double(), torch.from_numpy(features).double()
    d = torch.cdist(q, f) ** 2 if metric == "l2" else -(q @ f.T)  # (Q, N)
    if query_classes is not None:
        d[torch.from_numpy(query_classes[:, None] != labels[None, :])] = float("inf")
    return d.min(1)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("restricted", [False, True])
def test_equals_brute_force(metric: str, restricted: bool):
    features, labels, rows, image_ids, locations = patches()
    queries = np.maximum(np.random.default_rng(1).standard_normal((12, 16)), 0).astype(np.float32)
    query_classes = np.arange(12) % 4 if restricted else None
    index = NearestPatchIndex(16, metric=metric, device="cpu", flush_rows=100)  # several flushes
    for start in range(0, len(features), 50):  # streaming adds in uneven chunks
        s = slice(start, start + 50)
        index.add(features[s], labels[s], rows[s], image_ids[s], locations[s])
    found = index.search(queries, query_classes, return_vectors=True)
    best = brute_force(queries, features, labels, query_classes, metric)
    winners = best.indices.numpy()
    assert np.array_equal(found.vectors, features[winners])  # exact copies of the patches
    assert (found.rows == rows[winners]).all()
    assert (found.image_ids == image_ids[winners]).all()
    assert (found.locations == locations[winners]).all()
    assert np.allclose(found.distances, best.values.numpy(), rtol=1e-5, atol=1e-4)
    if restricted:
        assert (found.labels == query_classes).all()


def test_two_shards_pick_the_same_winners():
    features, labels, rows, image_ids, locations = patches(seed=2)
    queries = np.maximum(np.random.default_rng(3).standard_normal((8, 16)), 0).astype(np.float32)
    classes = np.arange(8) % 4
    whole = NearestPatchIndex(16, device="cpu")
    whole.add(features, labels, rows, image_ids, locations)
    shards = []
    half = len(features) // 2
    for s in (slice(0, half), slice(half, None)):  # what two DDP ranks would each hold
        shard = NearestPatchIndex(16, device="cpu")
        shard.add(features[s], labels[s], rows[s], image_ids[s], locations[s])
        shards.append(shard.search(queries, classes))
    merged, expected = merge_nearest(shards), whole.search(queries, classes)
    assert (merged.rows == expected.rows).all() and (merged.locations == expected.locations).all()
    assert np.allclose(merged.distances, expected.distances)


def test_bad_metric_is_refused():
    with pytest.raises(ValueError, match="metric"):
        NearestPatchIndex(4, metric="cosine")


@pytest.mark.parametrize("restricted", [False, True])
def test_decompose_projection_one_class_index_at_a_time_equals_brute_force(restricted: bool):
    from proto_lightning.prototypes.features import FeatureStore
    from proto_lightning.stages.decompose import project_prototypes

    features, labels, rows, image_ids, locations = patches(seed=2)
    order = np.argsort(labels, kind="stable")  # the store is class-ordered
    counts = np.bincount(labels, minlength=5)  # class 4 has no images: an empty slot
    store = FeatureStore(
        features[order],
        rows[order],
        image_ids[order],
        locations[order],
        labels[order],
        np.concatenate([[0], np.cumsum(counts)]),
        (3, 3),
    )
    prototypes = torch.from_numpy(
        np.maximum(np.random.default_rng(3).standard_normal((5, 2, 16)), 0).astype(np.float32)
    )
    found = project_prototypes(store, prototypes, "l2", restricted, "cpu", chunk=30)
    query_classes = np.repeat(np.arange(5), 2)
    best = brute_force(
        prototypes.reshape(10, 16).numpy(),
        store.features,
        store.labels,
        query_classes if restricted else None,
        "l2",
    )
    has_patches = np.isfinite(best.values.numpy())
    winners = best.indices.numpy()[has_patches]
    assert (found.rows[has_patches] == store.rows[winners]).all()
    assert (found.locations[has_patches] == store.locations[winners]).all()
    assert (found.rows[~has_patches] == -1).all() and has_patches.sum() == (8 if restricted else 10)
