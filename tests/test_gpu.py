"""The CUDA paths, run where a GPU exists (`make test-gpu`); skipped on a CPU machine (marker `gpu`).

Each checks the device result against the CPU's: the streaming decompose with its batch resident on
the GPU (TF32 feature passes, FAISS on the GPU when it sees one), ProtoPNet's push, and evaluate's
heatmap metrics.
"""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from proto_lightning.data.loaders import class_loader
from proto_lightning.prototypes.decomposition import NMFSettings
from proto_lightning.prototypes.projection import NearestPatchIndex, ProjectionSettings
from proto_lightning.prototypes.stream import (
    GIB,
    StreamSteps,
    decompose_stream,
    plan_class_batches,
    stream_class_batches,
)
from tests.test_stream import FEATURES, images_of_classes

pytestmark = pytest.mark.gpu


def stream_on(device: str, metric: str = "ip"):
    data = images_of_classes([6, 4, 5, 3])
    loader = DataLoader(data, batch_size=4)
    labels = data.tensors[1].numpy()
    V = torch.randn(4, 12, generator=torch.Generator().manual_seed(2))
    features = FEATURES.to(device)
    plan = plan_class_batches(np.bincount(labels), 12 * 16, 2, GIB)
    steps = StreamSteps(
        2, NMFSettings(max_iter=40, classes_per_batch=2), projection=ProjectionSettings(metric)
    )
    batches = stream_class_batches(
        features, lambda c: class_loader(loader, labels, c), labels, plan, device
    )
    return decompose_stream(batches, V, steps), V


def test_the_streaming_decompose_on_the_gpu_equals_the_cpus():
    gpu, V = stream_on("cuda")
    cpu, _ = stream_on("cpu")
    assert gpu.decomposition.relative_head_error(V) < 1e-6
    assert torch.allclose(gpu.decomposition.bases, cpu.decomposition.bases, atol=1e-3)
    assert (gpu.projection.rows == cpu.projection.rows).mean() > 0.8  # float32 NMF paths differ


def test_faiss_on_the_gpu_finds_the_cpus_nearest_patches():
    rng = np.random.default_rng(0)
    features, queries = rng.random((5000, 64), np.float32), rng.random((20, 64), np.float32)
    labels = np.zeros(5000, np.int64)
    found = []
    for device in ("cuda", "cpu"):
        index = NearestPatchIndex(64, "l2", device)
        index.add(features, labels, np.arange(5000), np.arange(5000), np.zeros((5000, 2), np.int64))
        found.append(index.search(queries))
    assert (found[0].rows == found[1].rows).all()


def test_protopnet_push_on_the_gpu_equals_the_cpus(parts_root):
    from proto_lightning.data import CUB200DataModule
    from proto_lightning.models.protopnet import ProtoPNet

    rows = []
    for device in ("cuda", "cpu"):
        torch.manual_seed(0)
        model = ProtoPNet(
            {"name": "small_cnn"}, num_classes=4, prototypes_per_class=2, prototype_dim=16
        )
        model = model.to(device).eval()
        dm = CUB200DataModule(parts_root, image_size=48, val_fraction=0.25, eval_batch_size=5)
        dm.setup()
        rows.append(model.push(dm).rows)
    assert (rows[0] == rows[1]).all()


def test_evaluate_on_the_gpu_equals_the_cpu(tiny_demo, parts_root, tmp_path):
    import csv

    from tests.helpers import run_cli

    tables = {}
    for accelerator in ("gpu", "cpu"):
        run = tmp_path / accelerator
        run_cli(
            "evaluate",
            f"data.root={parts_root}",
            "data.image_size=48",
            f"trainer.accelerator={accelerator}",
            "trainer.devices=1",
            f"from_run={tiny_demo.run_dir}",
            "evaluation.methods=[posthoc,gradcam]",
            "evaluation.faithfulness.images=4",
            "evaluation.faithfulness.steps=8",
            "evaluation.bootstrap.resamples=20",
            f"hydra.run.dir={run}",
        )
        with (run / "results.csv").open() as f:
            tables[accelerator] = list(csv.DictReader(f))
    for gpu, cpu in zip(tables["gpu"], tables["cpu"], strict=True):
        for key in ("accuracy", "deletion_auc", "insertion_auc"):
            if cpu.get(key):
                assert float(gpu[key]) == pytest.approx(float(cpu[key]), abs=1e-3), key
