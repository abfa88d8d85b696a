"""DDP fit with 2 CPU processes over gloo, launched like a user would (the same code path as NCCL)."""

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import fast_overrides
from tests.helpers import run_cli


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


def test_decompose_and_evaluate_on_two_gloo_processes_match_one(parts_root: Path, tmp_path: Path):
    def overrides(run: Path) -> list[str]:
        return [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]

    run_cli("blackbox", *overrides(tmp_path / "bb"), "trainer=cpu", "trainer.max_epochs=2")
    (ckpt,) = (tmp_path / "bb" / "checkpoints").glob("best-*.ckpt")
    shared = [
        "model.nmf.classes_per_batch=2",
        "model.projection.class_restricted=false",
    ]  # 2 batches
    for name, trainer in (("one", "trainer=cpu"), ("two", "trainer=ddp_cpu")):
        done = run_cli(
            "decompose",
            *overrides(tmp_path / f"dec_{name}"),
            trainer,
            f"blackbox_ckpt={ckpt}",
            *shared,
        )
        if name == "two":
            assert (
                "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
            )
    one = torch.load(tmp_path / "dec_one" / "posthoc.pt", weights_only=True)
    two = torch.load(tmp_path / "dec_two" / "posthoc.pt", weights_only=True)
    assert torch.allclose(one["prototypes"], two["prototypes"], atol=1e-6)
    for key in ("rows", "locations"):  # the min-reduce over rank shards finds the same patches
        assert torch.equal(one["projection"][key], two["projection"][key])

    tables = {}
    for name, trainer in (("one", "trainer=cpu"), ("two", "trainer=ddp_cpu")):
        run = tmp_path / f"eval_{name}"
        done = run_cli(
            "evaluate",
            *overrides(run),
            trainer,
            f"blackbox_ckpt={ckpt}",
            f"posthoc={tmp_path / 'dec_one' / 'posthoc.pt'}",
            "evaluation.faithfulness.images=6",
            "evaluation.faithfulness.steps=8",
            "evaluation.lime.samples=20",
            "evaluation.bootstrap.resamples=50",
            "evaluation.figures.images=1",
        )
        assert ("GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout) == (name == "two")
        assert done.stdout.count("run folder:") == 1  # one table, by rank 0
        with (run / "results.csv").open() as f:
            tables[name] = list(csv.DictReader(f))
    assert [r["method"] for r in tables["two"]] == ["black box", "Post-hoc PPN", "Grad-CAM", "LIME"]
    for row_one, row_two in zip(tables["one"], tables["two"], strict=True):
        for key, value in row_one.items():
            if key == "method" or key.startswith("seconds") or value == "":
                assert key.startswith("seconds") or row_two[key] == value
                continue
            assert float(row_two[key]) == pytest.approx(float(value), abs=1e-5), (
                row_one["method"],
                key,
            )
