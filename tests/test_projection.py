"""The shared nearest-patch module equals a brute-force torch search, with and without class restriction."""

import numpy as np
import pytest
import torch

from proto_lightning.prototypes import projection
from proto_lightning.prototypes.projection import (
    NearestPatchIndex,
    Projection,
    all_reduce_nearest,
    merge_nearest,
)


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


def test_queries_without_a_candidate_get_the_empty_answer_and_single_queries_are_searched():
    """Class 2 has no patch: its query keeps row/image/location/label -1 and distance inf. Class 0's
    single query is searched like any other; vectors come back only when asked for."""
    features = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    index = NearestPatchIndex(2, device="cpu")
    index.add(
        features, np.array([0, 1, 1]), np.array([7, 8, 9]), np.array([70, 80, 90]), np.zeros((3, 2))
    )
    assert index.size == 3
    found = index.search(np.array([[0.1, 0.0], [4.0, 4.0], [0.0, 0.0]]), np.array([0, 1, 2]))
    assert found.rows.tolist() == [7, 9, -1] and found.image_ids.tolist() == [70, 90, -1]
    assert found.labels.tolist() == [0, 1, -1] and found.locations[2].tolist() == [-1, -1]
    assert found.distances.tolist() == pytest.approx([0.01, 2.0, float("inf")])
    assert found.vectors is None


def test_size_counts_every_patch_and_a_full_buffer_goes_into_the_index():
    index = NearestPatchIndex(2, device="cpu", flush_rows=4)
    ones = np.ones((2, 2), dtype=np.float32)
    index.add(ones, np.array([0, 0]), np.arange(2), np.arange(2), np.zeros((2, 2)))
    assert index.size == 2 and sum(i.ntotal for i in index._indexes.values()) == 0  # buffered
    index.add(ones, np.array([1, 1]), np.arange(2), np.arange(2), np.zeros((2, 2)))
    assert index.size == 4 and sum(i.ntotal for i in index._indexes.values()) == 4  # flushed at 4
    index.search(ones[:1])
    assert index.size == 4


def test_merge_keeps_the_first_candidate_on_a_tie_and_placing_writes_a_subset():
    a, b = Projection.empty(2), Projection.empty(2)
    a.rows[:], a.distances[:] = [1, 1], [0.5, 2.0]
    b.rows[:], b.distances[:] = [2, 2], [0.5, 1.0]
    assert merge_nearest([a, b]).rows.tolist() == [1, 2]
    whole = Projection.empty(4)
    part = Projection.empty(2)
    part.rows[:], part.vectors = [5, 6], np.ones((2, 3), dtype=np.float32)
    whole.place(part, np.array([3, 1]))
    assert whole.rows.tolist() == [-1, 6, -1, 5] and whole.vectors[:, 0].tolist() == [0, 1, 0, 1]


def test_a_projection_round_trips_through_tensors_and_reports_its_boxes():
    p = Projection.empty(2)
    p.rows[:], p.locations[:] = [3, 4], [[1, 2], [0, 1]]
    state = p.to_dict()
    assert "vectors" not in state and all(isinstance(v, torch.Tensor) for v in state.values())
    back = Projection.from_dict(state)
    assert back.rows.tolist() == [3, 4] and back.vectors is None
    boxes = {"rf_boxes": np.array([[0, 4, 0, 4], [1, 5, 2, 6]])}
    record = back.record(1, boxes)
    assert record["row"] == 4 and record["location"] == (0, 1) and record["rf_box"] == (1, 5, 2, 6)
    assert "high_activation_box" not in record


def test_gpu_placement_follows_the_device_setting_and_the_rank(monkeypatch, caplog):
    """With FAISS seeing GPUs (faked: no index is built), auto and cuda use one, cpu does not; the GPU
    is the one asked for, else the process's LOCAL_RANK; without GPUs, cuda falls back to the CPU."""
    monkeypatch.setattr(projection.load_faiss(), "get_num_gpus", lambda: 1)
    monkeypatch.setattr(projection.torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert NearestPatchIndex(4, device="auto").gpu and NearestPatchIndex(4, device="cuda").gpu
    assert not NearestPatchIndex(4, device="cpu").gpu
    assert NearestPatchIndex(4, device="auto")._gpu_id == 1
    assert NearestPatchIndex(4, device="auto", gpu=0)._gpu_id == 0
    monkeypatch.delenv("LOCAL_RANK")
    assert NearestPatchIndex(4, device="auto")._gpu_id == 0
    assert "no GPU" not in caplog.text
    monkeypatch.setattr(projection.load_faiss(), "get_num_gpus", lambda: 0)
    assert not NearestPatchIndex(4, device="auto").gpu
    assert "no GPU" not in caplog.text  # auto on a CPU machine is the normal case: no warning
    assert not NearestPatchIndex(4, device="cuda").gpu
    assert "projection.device=cuda but FAISS sees no GPU" in caplog.text
    with pytest.raises(
        ValueError, match="model.projection.device=.gpu. is not one of auto, cpu, cuda"
    ):
        NearestPatchIndex(4, device="gpu")


def test_all_reduce_takes_each_querys_nearest_over_the_ranks(monkeypatch):
    """Without a process group the local answer stands; with two ranks (a fake `dist` that hands
    back both ranks' answers) the nearest wins per query."""
    mine, theirs = Projection.empty(2), Projection.empty(2)
    mine.rows[:], mine.distances[:] = [1, 1], [0.5, 3.0]
    theirs.rows[:], theirs.distances[:] = [2, 2], [1.0, 2.0]
    assert all_reduce_nearest(mine) is mine

    class TwoRanks:
        is_available = staticmethod(lambda: True)
        is_initialized = staticmethod(lambda: True)
        get_world_size = staticmethod(lambda: 2)

        @staticmethod
        def all_gather_object(out: list, obj) -> None:
            out[:] = [obj, theirs]

    monkeypatch.setattr(projection, "dist", TwoRanks)
    assert all_reduce_nearest(mine).rows.tolist() == [1, 2]


def test_projection_settings_default_as_the_config_and_refuse_bad_values():
    """The facade's defaults are conf/model/posthoc.yaml's; a typo or an impossible percentile is
    refused naming the key."""
    from omegaconf import OmegaConf

    from proto_lightning.config import CONF_DIR
    from proto_lightning.errors import ConfigValueError
    from proto_lightning.prototypes.projection import ProjectionSettings

    conf = OmegaConf.load(CONF_DIR / "model" / "posthoc.yaml").projection
    assert ProjectionSettings() == ProjectionSettings(**conf)
    with pytest.raises(ConfigValueError, match="model.projection.metric='cos'"):
        ProjectionSettings(metric="cos")
    with pytest.raises(ConfigValueError, match="model.projection.device='gpu'"):
        ProjectionSettings(device="gpu")
    for percentile in (-0.5, 100.5):
        with pytest.raises(ConfigValueError, match="within 0..100"):
            ProjectionSettings(high_activation_percentile=percentile)
    assert ProjectionSettings(high_activation_percentile=100).high_activation_percentile == 100
    assert ProjectionSettings(high_activation_percentile=0).high_activation_percentile == 0


def test_an_unrestricted_projection_can_land_on_the_first_patch():
    """Row 0 of the index is searched too: a prototype equal to it is projected onto it."""
    features = np.random.RandomState(0).rand(12, 4).astype(np.float32)
    index = NearestPatchIndex(4, "l2")
    labels = np.repeat([0, 1], 6)
    index.add(features, labels, np.arange(12), np.arange(12) + 1, np.zeros((12, 2), np.int64))
    queries = features[[0, 6]]  # the first patch of each class
    for classes in (None, np.array([0, 1])):
        found = index.search(queries, classes)
        assert found.rows.tolist() == [0, 6] and np.allclose(found.distances, 0)
