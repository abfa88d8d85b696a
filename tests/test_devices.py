"""GPU paths exercised on the CPU: tensors on the network's device, FAISS on the rank's GPU with one
resources object, alpha on a rank-deficient basis as CUDA's only lstsq driver sees it, and
exactness under mixed precision (CPU bf16 autocast)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

import proto_lightning.prototypes.boxes as boxes_module
import proto_lightning.stages.decompose as decompose_module
from proto_lightning.config import compose_config
from proto_lightning.models.protopnet import ProtoPNet, ProtoPNetNet
from proto_lightning.prototypes import projection
from proto_lightning.prototypes.boxes import receptive_field_boxes
from proto_lightning.prototypes.decomposition import least_squares_alpha
from proto_lightning.prototypes.projection import NearestPatchIndex
from tests.helpers import fast_overrides


class ProbeSeen(Exception):
    """Raised by a spy once it has seen the probe."""


def test_receptive_field_probe_is_built_on_the_given_device():
    """`meta` stands for a CUDA device: the probe must arrive on it, not on the CPU."""
    seen = []

    def features(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.device)
        raise ProbeSeen

    with pytest.raises(ProbeSeen):
        receptive_field_boxes(features, 16, np.zeros((1, 2), dtype=int), torch.device("meta"))
    assert seen == [torch.device("meta")]


def spy_on_receptive_field(monkeypatch) -> list:
    seen = []
    real = boxes_module.receptive_field_boxes

    def spy(features_fn, image_size, locations, device=None):
        seen.append(device)
        return real(features_fn, image_size, locations, device or "cpu")

    monkeypatch.setattr(boxes_module, "receptive_field_boxes", spy)
    return seen


def test_decompose_and_protopnet_push_probe_on_their_networks_device(
    monkeypatch, stage_config, tiny_demo, parts_root, tmp_path
):
    seen = spy_on_receptive_field(monkeypatch)  # one spy for both networks
    best = tiny_demo.artifacts["blackbox best checkpoint"]
    decompose_module.run_decompose(stage_config("decompose", f"blackbox_ckpt={best}"))
    assert seen == [torch.device("cpu")]  # the device the stage moved the network to

    seen.clear()
    model = ProtoPNet.load_checkpoint(tiny_demo.artifacts["protopnet last checkpoint"])
    cfg = compose_config("protopnet", fast_overrides(parts_root, tmp_path))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model.push(datamodule)
    assert seen == [model.device]


def test_faiss_indexes_go_to_this_ranks_gpu_sharing_one_resources_object(monkeypatch):
    """Spies in place of FAISS's GPU calls: rank 1 (LOCAL_RANK=1, no CUDA here) must use GPU 1, and
    every index of the process one StandardGpuResources; the search is still exact."""
    made, placed = [], []

    def resources():
        made.append(object())
        return made[-1]

    def to_gpu(res, gpu, index):
        placed.append((res, gpu))
        return index  # the CPU index stands in for its GPU copy

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "StandardGpuResources", resources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    projection.gpu_resources.cache_clear()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    for _ in range(2):  # two indexes (e.g. two pushes), two classes each
        index = NearestPatchIndex(4, device="auto")
        index.add(features, labels, np.arange(6), np.arange(6), np.zeros((6, 2), dtype=int))
        found = index.search(features[[1, 4]], classes=np.array([0, 1]))
        assert found.rows.tolist() == [1, 4]
    projection.gpu_resources.cache_clear()
    assert [gpu for _, gpu in placed] == [1, 1, 1, 1]
    assert len(made) == 1 and all(res is made[0] for res, _ in placed)


def test_alpha_survives_a_dead_nmf_component_with_cudas_lstsq_driver(monkeypatch):
    """CUDA's torch.linalg.lstsq has only `gels` (full rank assumed). Forced here, a zero row of P must
    still give numpy's minimum-norm least-squares alpha (alpha_i = 0 for the dead component)."""
    real = torch.linalg.lstsq
    monkeypatch.setattr(
        torch.linalg, "lstsq", lambda A, B, **kw: real(A, B, **{**kw, "driver": "gels"})
    )
    rng = np.random.default_rng(0)
    P = rng.random((2, 3, 8))  # (C, k, D)
    P[0, 1] = 0.0  # class 0's second component died
    V = rng.random((2, 8))
    alpha = least_squares_alpha(torch.from_numpy(P), torch.from_numpy(V))
    for c in range(2):
        reference = np.linalg.lstsq(P[c].T, V[c], rcond=None)[0]
        assert np.allclose(alpha[c].numpy(), reference, atol=1e-10)
    assert alpha[0, 1] == 0.0


def test_protopnet_distances_stay_float32_under_autocast():
    """A patch equal to a prototype has distance 0; bf16's x2 - 2xp + p2 would miss it by ~0.1."""
    torch.manual_seed(0)
    net = ProtoPNetNet("small_cnn", num_classes=2, prototypes_per_class=2, prototype_dim=64)
    z = torch.rand(1, 64, 3, 3) * 4
    z[0, :, 1, 1] = net.prototype_vectors.data[0].flatten()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = net.l2_distances(z)  # (B, m, H, W)
    patches = z[0].flatten(1).T.double()  # (HW, d)
    reference = torch.cdist(patches, net.prototype_vectors.flatten(1).double()) ** 2  # (HW, m)
    assert d.dtype == torch.float32
    assert torch.allclose(d[0].flatten(1).T.double(), reference, atol=1e-3)
    assert float(d[0, 0, 1, 1]) < 1e-4


def test_decompose_is_exact_when_the_trainer_asks_for_mixed_precision(stage_config, tiny_demo):
    """Paper experiments run `trainer: gpu` (16-mixed); bf16-mixed is its CPU stand-in."""
    best = tiny_demo.artifacts["blackbox best checkpoint"]
    result = decompose_module.run_decompose(
        stage_config("decompose", f"blackbox_ckpt={best}", "trainer.precision=bf16-mixed")
    )
    assert result.metrics["test/max_logit_gap"] < 1e-4
    assert result.metrics["test/agreement"] == 1.0
