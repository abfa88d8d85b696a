"""DDP fit with 2 CPU processes over gloo, launched like a user would (the same code path as NCCL)."""

import csv
from pathlib import Path

import pytest
import torch

from tests.helpers import fast_overrides, run_cli

pytestmark = pytest.mark.slow  # multi-process runs


def test_ddp_cpu_fit_with_two_gloo_processes(parts_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    overrides = [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]
    done = run_cli("blackbox", *overrides, "trainer=ddp_cpu", "trainer.max_epochs=2")
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 1
    # 12 train images, batch 8, 2 ranks -> each rank sees 6 -> 1 step per epoch
    assert state["global_step"] == 2
    assert done.stdout.count("run folder:") == 1  # only rank 0 reports


ONE = ["trainer=cpu"]


def test_decompose_and_evaluate_on_three_gloo_processes_match_one(parts_root: Path, tmp_path: Path):
    """More ranks than work, and every rank still takes part in every collective: decompose has 2
    NMF class batches on 3 ranks (rank 2 has none); evaluate has 1 faithfulness image on 2 ranks."""

    def overrides(run: Path) -> list[str]:
        return [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]

    run_cli("blackbox", *overrides(tmp_path / "bb"), *ONE, "run_test=false")
    (ckpt,) = (tmp_path / "bb" / "checkpoints").glob("best-*.ckpt")
    shared = [
        "model.nmf.classes_per_batch=2",
        "model.projection.class_restricted=false",
        "kmex.enabled=true",  # KMEx's k-means per rank's classes, its nearest images min-reduced
        "kmex.prototypes_per_class=2",
    ]  # 2 batches
    for name, (world, trainer) in {
        "one": (1, ONE),
        "three": (3, ["trainer=ddp_cpu", "trainer.devices=3"]),
    }.items():
        done = run_cli(
            "decompose",
            *overrides(tmp_path / f"dec_{name}"),
            *trainer,
            f"blackbox_ckpt={ckpt}",
            *shared,
        )
        assert (f"GLOBAL_RANK: 1, MEMBER: 2/{world}" in done.stderr + done.stdout) == (world > 1)
    one = torch.load(tmp_path / "dec_one" / "posthoc.pt", weights_only=True)
    three = torch.load(tmp_path / "dec_three" / "posthoc.pt", weights_only=True)
    assert torch.allclose(one["prototypes"], three["prototypes"], atol=1e-6)
    for key in ("rows", "locations"):  # the min-reduce over rank shards finds the same patches
        assert torch.equal(one["projection"][key], three["projection"][key])
    assert three["extras"]["map_size"] == one["extras"]["map_size"]
    one, three = (
        torch.load(tmp_path / f"dec_{n}" / "kmex.pt", weights_only=True) for n in ("one", "three")
    )
    assert one["prototypes"].shape == (4, 2, 128)
    assert torch.allclose(one["prototypes"], three["prototypes"], atol=1e-6)
    assert torch.equal(one["projection"]["rows"], three["projection"]["rows"])

    tables = {}
    for name, trainer in {"one": ONE, "two": ["trainer=ddp_cpu", "trainer.devices=2"]}.items():
        run = tmp_path / f"eval_{name}"
        done = run_cli(
            "evaluate",
            *overrides(run),
            *trainer,
            f"blackbox_ckpt={ckpt}",
            f"posthoc={tmp_path / 'dec_one' / 'posthoc.pt'}",
            "evaluation.faithfulness.images=1",
            "evaluation.faithfulness.steps=8",
            "evaluation.lime.samples=20",
            "evaluation.bootstrap.resamples=50",
            "evaluation.figures.images=1",
        )
        assert ("GLOBAL_RANK: 1, MEMBER: 2/" in done.stderr + done.stdout) == (name != "one")
        assert done.stdout.count("run folder:") == 1  # one table, by rank 0
        with (run / "results.csv").open() as f:
            tables[name] = list(csv.DictReader(f))
    methods = [r["method"] for r in tables["two"]]
    assert methods == ["black box", "Post-hoc PPN", "Grad-CAM", "LIME"]
    for row_one, row_two in zip(tables["one"], tables["two"], strict=True):
        for key, value in row_one.items():
            if key in ("method", "part_protocol") or key.startswith("seconds") or value == "":
                assert key.startswith("seconds") or row_two[key] == value
                continue
            assert float(row_two[key]) == pytest.approx(float(value), abs=1e-5), (
                row_one["method"],
                key,
            )


def test_faithfulness_callback_on_two_gloo_processes_logs_the_whole_subsets_value(
    parts_root: Path, tmp_path: Path
):
    """3 images over 2 ranks (2 + 1): each rank explains its share, every rank logs the value over
    all 3, equal to one process measuring the same checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from proto_lightning.callbacks import FaithfulnessCallback
    from proto_lightning.models import BlackBoxClassifier

    run = tmp_path / "run"
    overrides = [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]
    run_cli(
        "blackbox",
        *overrides,
        "trainer=ddp_cpu",
        "callbacks.faithfulness.images=3",
        "callbacks.faithfulness.every_n_epochs=1",
        "callbacks.faithfulness.steps=6",
    )
    with (run / "logs" / "metrics.csv").open() as f:
        rows = [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]
    cfg = OmegaConf.load(run / "config.yaml")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    (best,) = (run / "checkpoints").glob("best-*.ckpt")  # the one epoch: validated and tested
    module = BlackBoxClassifier.load_checkpoint(best)
    callback = FaithfulnessCallback(cfg.evaluation, images=3, steps=6, seed=cfg.seed)
    for split, dataset in (("val", datamodule.val_set), ("test", datamodule.test_set)):
        one = callback.measure(module, datamodule, dataset)
        (row,) = [r for r in rows if f"{split}/deletion_auc" in r]
        for name in ("deletion_auc", "insertion_auc"):
            # float32 curves of other batch compositions: as the other DDP tests, to 1e-5
            assert float(row[f"{split}/{name}"]) == pytest.approx(one[name], abs=1e-5)
