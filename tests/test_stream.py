"""The streaming decomposition: class batches planned by memory, read from the images, decomposed and
projected while resident, equal to the store-based path with FAISS and to brute force."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from proto_lightning.data.loaders import class_loader, dict_batches
from proto_lightning.errors import ConfigValueError, ResourceError
from proto_lightning.prototypes.decomposition import (
    NMFSettings,
    RefinementSettings,
    class_maps,
    decompose_head,
    prototype_heatmaps,
    residual_split,
)
from proto_lightning.prototypes.features import ClassBatch, collect_features
from proto_lightning.prototypes.kmeans import KMeansSettings
from proto_lightning.prototypes.projection import NearestPatchIndex, ProjectionSettings
from proto_lightning.prototypes.stream import (
    GIB,
    MAX_ELEMENTS,
    StreamSteps,
    decompose_stream,
    feature_elements,
    plan_class_batches,
    require_disk,
    require_memory,
    stream_class_batches,
)


def test_classes_are_batched_in_blocks_until_a_memory_limit():
    """Worked by hand: a batch's bytes are C_b x its largest class x elements x 4."""
    assert plan_class_batches(np.array([2] * 5), 10, 2, float("inf")) == [[0, 1], [2, 3], [4]]
    # 4 elements allowed: [0] (1 image); + class 1 (3 images) -> 2 x 3 > 4; [1]; + class 2 -> 6 > 4;
    # [2]; + class 3 -> 2 x 1 = 2 <= 4
    assert plan_class_batches(np.array([1, 3, 1, 1]), 1, 8, 16) == [[0], [1], [2, 3]]
    # two images of 2^30 elements each: 2^31 elements, one past 32-bit indexing -> apart
    assert plan_class_batches(np.array([1, 1]), 2**30, 8, float("inf")) == [[0], [1]]
    assert MAX_ELEMENTS == 2**31 - 1
    with pytest.raises(ResourceError, match=r"class 1's features take .* \(3 images\)"):
        plan_class_batches(np.array([1, 3]), 2**28, 8, 2 * GIB)
    with pytest.raises(ConfigValueError, match=r"class\(es\) \[1\] have no training images"):
        plan_class_batches(np.array([1, 0, 2]), 4, 8, GIB)


def test_memory_and_disk_are_checked_before_any_work(tmp_path):
    require_memory(2**20, "cpu", 0.0)  # a MiB fits
    require_memory(0, "cpu", 1e9)  # no batch: nothing to check
    with pytest.raises(ResourceError, match=r"needs .* GiB on cpu .* GiB is free"):
        require_memory(2**20, "cpu", 1e9)
    require_disk(tmp_path / "new", 2**20, 0.0)  # the folder is made
    require_disk(tmp_path, 0, 1e9)
    with pytest.raises(ResourceError, match=rf"in {tmp_path} and 1000000000.0 GiB kept free"):
        require_disk(tmp_path, 2**20, 1e9)


def images_of_classes(counts: list[int], size: int = 20, seed: int = 0) -> TensorDataset:
    """Random images, labels in an interleaved order (a class's images are not contiguous)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    return TensorDataset(torch.rand(len(labels), 3, size, size, generator=generator), labels)


FEATURES = nn.Sequential(nn.Conv2d(3, 12, 5, stride=4), nn.ReLU())  # (B, 12, 4, 4) non-negative
torch.nn.init.normal_(FEATURES[0].weight, generator=torch.Generator().manual_seed(1))


def brute_force(features: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Index of the nearest row of `features` for each query (float64, first of equals)."""
    f, q = features.astype(np.float64), queries.astype(np.float64)
    if metric == "ip":
        return (-(f @ q.T)).argmin(0)
    return ((f[:, None, :] - q[None]) ** 2).sum(-1).argmin(0)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_streaming_equals_the_store_and_faiss(tmp_path, metric):
    """Classes of 5, 3, 4, 2 images read 3 at a time (batches cut across classes), 2 classes per
    class batch: the streamed prototypes equal the store path's; the projection from the resident
    batch equals FAISS over the store and brute force."""
    data = images_of_classes([5, 3, 4, 2])
    loader = DataLoader(data, batch_size=3)
    labels = data.tensors[1].numpy()
    V = torch.randn(4, 12, generator=torch.Generator().manual_seed(2))
    k, nmf, refinement = 2, NMFSettings(max_iter=40, classes_per_batch=2), RefinementSettings()
    with torch.no_grad():
        store = collect_features(FEATURES, dict_batches(loader), labels, 4, 1.0, tmp_path)
    reference = decompose_head(store, V, k, nmf, refinement)
    index = NearestPatchIndex(12, metric)
    index.add(store.features, store.labels, store.rows, store.image_ids, store.locations)
    by_faiss = index.search(reference.prototypes.flatten(0, 1), np.repeat(np.arange(4), k))

    counts = np.bincount(labels)
    elements = feature_elements(FEATURES, data.tensors[0][0], "cpu")
    assert elements == 12 * 4 * 4
    plan = plan_class_batches(counts, elements, nmf.classes_per_batch, GIB)
    assert plan == [[0, 1], [2, 3]]
    steps = StreamSteps(k, nmf, refinement, ProjectionSettings(metric=metric))
    results = [
        decompose_stream(
            stream_class_batches(
                FEATURES, lambda c: class_loader(loader, labels, c), labels, plan, "cpu"
            ),
            V,
            steps,
            overlap,
        )
        for overlap in (True, False)
    ]
    for result in results:
        streamed = result.decomposition
        assert torch.allclose(streamed.prototypes, reference.prototypes, atol=1e-5)
        assert streamed.relative_head_error(V) < 1e-6
        assert (result.projection.rows == by_faiss.rows).all()
        assert (result.projection.locations == by_faiss.locations).all()
        assert np.allclose(result.projection.distances, by_faiss.distances, rtol=1e-4, atol=1e-5)
    for q, prototype in enumerate(reference.prototypes.flatten(0, 1).numpy()):
        mine = store.class_slice(q // k)
        winner = brute_force(mine, prototype[None], metric)[0] + store.offsets[q // k]
        assert results[0].projection.rows[q] == store.rows[winner]
        assert (results[0].projection.locations[q] == store.locations[winner]).all()
    assert results[0].timings.keys() == {"features", "nmf", "refinement", "refinement_wait"}


def test_an_unrestricted_projection_and_kmex_stream_too(tmp_path):
    """The FAISS index of every streamed patch finds brute force's nearest patch of any class; KMEx's
    centres are scikit-learn's k-means of the images' mean features, shown as the nearest image."""
    data = images_of_classes([4, 5, 3], seed=3)
    loader = DataLoader(data, batch_size=4)
    labels = data.tensors[1].numpy()
    V = torch.randn(3, 12, generator=torch.Generator().manual_seed(4))
    kmeans = KMeansSettings(prototypes_per_class=2, n_init=3)
    steps = StreamSteps(
        2,
        NMFSettings(max_iter=30, classes_per_batch=2),
        RefinementSettings(objective="even"),
        ProjectionSettings(metric="l2", class_restricted=False),
        kmeans,
        seed=5,
    )
    plan = plan_class_batches(np.bincount(labels), 12 * 16, 2, GIB)
    batches = stream_class_batches(
        FEATURES, lambda c: class_loader(loader, labels, c), labels, plan, "cpu"
    )
    result = decompose_stream(batches, V, steps)
    with torch.no_grad():
        store = collect_features(FEATURES, dict_batches(loader), labels, 3, 1.0, tmp_path)
    prototypes = result.decomposition.prototypes.flatten(0, 1)
    found = result.index.search(prototypes)
    winners = brute_force(store.features, prototypes.numpy(), "l2")
    assert (found.rows == store.rows[winners]).all()
    assert (found.labels != np.repeat(np.arange(3), 2)).any()  # some land on another class
    images = np.asarray(store.features).reshape(-1, 16, 12).mean(1)  # (n, D) pooled vectors
    image_labels = store.labels[::16]
    for c in range(3):
        X = images[image_labels == c].astype(np.float64)
        expected = KMeans(2, n_init=3, max_iter=300, random_state=5 + c).fit(X).cluster_centers_
        assert np.allclose(result.kmex_centres[c].numpy(), expected, atol=1e-5)
        # the chosen image is a nearest one (a 2-image cluster's centre is equally near both)
        squared = ((X[:, None, :] - expected[None]) ** 2).sum(-1)  # (n_c, 2)
        rows = list(store.rows[::16][image_labels == c])
        chosen = [rows.index(r) for r in result.kmex_projection.rows[2 * c : 2 * c + 2]]
        assert np.allclose(squared[chosen, [0, 1]], squared.min(0), rtol=1e-5)


def test_prototype_heatmaps_from_the_maps_equal_the_features_times_the_prototypes():
    """f_j . p~_i from the (N, k + 1) maps kept after the features are released."""
    generator = torch.Generator().manual_seed(6)
    F = torch.rand(40, 9, generator=generator)
    P = torch.rand(3, 9, generator=generator).double()
    P[2] = 0  # a dead base
    alpha, R = torch.randn(3, generator=generator).double(), torch.randn(9).double()
    beta, shift = torch.tensor([0.2, 0.5, 0.3]).double(), torch.tensor([0.4, -0.3, 0.6]).double()
    maps = class_maps(F, torch.rand(40, 3), P, R, 4)
    prototypes = alpha[:, None] * P + residual_split(beta, shift, P, R)  # (3, 9)
    expected = F.double() @ prototypes.T
    assert torch.allclose(prototype_heatmaps(maps, P, R, alpha, beta, shift), expected)
    assert torch.allclose(maps.sq, F.double().pow(2).sum(1))


def test_a_store_batch_is_the_store_padded_by_class(tmp_path):
    data = images_of_classes([3, 1, 2], seed=7)
    labels = data.tensors[1].numpy()
    with torch.no_grad():
        store = collect_features(
            FEATURES, dict_batches(DataLoader(data, batch_size=2)), labels, 3, 1.0, tmp_path
        )
    batch = ClassBatch.of_store(store, [1, 2], "cpu")
    assert batch.F.shape == (2, 2 * 16, 12) and batch.counts.tolist() == [16, 32]
    assert torch.equal(batch.F[0, :16], torch.from_numpy(store.class_slice(1)))
    assert (batch.F[0, 16:] == 0).all() and (batch.rows[0, 16:] == -1).all()
    assert torch.equal(batch.F[1], torch.from_numpy(store.class_slice(2)))
