"""The black-box stage on CPU: fit, checkpoints, resolved config, resume, kill-and-resume, test, bad checkpoints."""

import csv
from pathlib import Path

import pytest
import torch
import yaml

from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.models import BlackBoxClassifier
from proto_lightning.stages.blackbox import run_blackbox, run_test
from tests.helpers import KilledRun


def test_tiny_fit_writes_checkpoints_config_and_test_accuracy(stage_config):
    cfg = stage_config("blackbox", "trainer.max_epochs=2")
    result = run_blackbox(cfg)
    ckpts = result.artifacts["checkpoints"]
    assert (ckpts / "last.ckpt").is_file()
    assert result.artifacts["best checkpoint"].is_file()
    assert 0.0 <= result.metrics["test/acc"] <= 1.0
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 4 and saved["trainer"]["max_epochs"] == 2
    assert "${" not in (result.run_dir / "config.yaml").read_text()  # resolved
    assert (result.run_dir / "logs" / "metrics.csv").is_file()  # csv logger
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 1


def test_resume_continues_the_epoch_count(stage_config, tmp_path: Path):
    first = run_blackbox(stage_config("blackbox", "trainer.max_epochs=1", "run_test=false"))
    last = first.artifacts["checkpoints"] / "last.ckpt"
    steps_one_epoch = torch.load(last, weights_only=True)["global_step"]
    resumed = run_blackbox(
        stage_config(
            "blackbox",
            "trainer.max_epochs=3",
            f"ckpt_path={last}",
            "run_test=false",
            f"run_dir={tmp_path / 'resumed'}",
        )
    )
    state = torch.load(resumed.artifacts["checkpoints"] / "last.ckpt", weights_only=True)
    assert state["epoch"] == 2 and state["global_step"] == 3 * steps_one_epoch
    assert resumed.metrics["epochs"] == 3


def test_killed_run_resumes_from_its_last_checkpoint(stage_config):
    cfg = stage_config(
        "blackbox",
        "trainer.max_epochs=3",
        "run_test=false",
        "+callbacks.kill._target_=tests.helpers.RaiseAtEpoch",
        "+callbacks.kill.epoch=2",
    )
    with pytest.raises(KilledRun):
        run_blackbox(cfg)
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1  # epochs 0 and 1 done and saved; nothing lost
    optimizer_steps = state["optimizer_states"][0]["state"][0]["step"]
    resumed = run_blackbox(
        stage_config("blackbox", "trainer.max_epochs=3", f"ckpt_path={last}", "run_test=false")
    )
    final = torch.load(resumed.artifacts["checkpoints"] / "last.ckpt", weights_only=True)
    assert final["epoch"] == 2
    assert (
        final["optimizer_states"][0]["state"][0]["step"] == optimizer_steps * 3 / 2
    )  # AdamW state carried on
    with open(resumed.run_dir / "logs" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    validated = [int(row["epoch"]) for row in rows if row["val/acc"]]
    assert validated == [0, 1, 2]  # the killed attempt's epochs are still in the resumed run's log


def test_checkpoint_of_another_architecture_is_refused(stage_config, tmp_path: Path):
    first = run_blackbox(stage_config("blackbox", "run_test=false"))
    last = first.artifacts["checkpoints"] / "last.ckpt"
    with pytest.raises(IncompatibleWeightsError, match="backbone='small_cnn'.*resnet18"):
        run_blackbox(
            stage_config(
                "blackbox",
                "model/backbone=resnet18",
                f"ckpt_path={last}",
                f"run_dir={tmp_path / 'other'}",
            )
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_blackbox(stage_config("blackbox", f"ckpt_path={tmp_path / 'nope.ckpt'}"))


def test_test_stage_reports_accuracy_of_a_checkpoint(stage_config, tmp_path: Path):
    first = run_blackbox(stage_config("blackbox"))
    best = first.artifacts["best checkpoint"]
    result = run_test(stage_config("test", f"ckpt_path={best}", f"run_dir={tmp_path / 'test'}"))
    assert result.metrics["test/acc"] == pytest.approx(first.metrics["test/acc"])
    model = BlackBoxClassifier.load_checkpoint(best)
    assert model.hparams.backbone["name"] == "small_cnn"


def test_test_stage_refuses_bad_checkpoints(stage_config, tmp_path: Path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(IncompatibleWeightsError, match="cannot read"):
        run_test(stage_config("test", f"ckpt_path={truncated}"))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, foreign)
    with pytest.raises(IncompatibleWeightsError, match="not a BlackBoxClassifier"):
        run_test(stage_config("test", f"ckpt_path={foreign}"))
    first = run_blackbox(stage_config("blackbox", "run_test=false", f"run_dir={tmp_path / 'a'}"))
    state = torch.load(first.artifacts["checkpoints"] / "last.ckpt", weights_only=True)
    state["hyper_parameters"]["num_classes"] = 9
    state["state_dict"]["net.head.weight"] = torch.zeros(9, 256)
    state["state_dict"]["net.head.bias"] = torch.zeros(9)
    other = tmp_path / "nine.ckpt"
    torch.save(state, other)
    with pytest.raises(IncompatibleWeightsError, match="predicts 9 classes"):
        run_test(stage_config("test", f"ckpt_path={other}"))


def test_wandb_logger_runs_offline(stage_config):
    cfg = stage_config(
        "blackbox", "logger=wandb", "run_test=false", "trainer.limit_train_batches=1"
    )
    result = run_blackbox(cfg)
    runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_demo_chains_the_stages(tiny_demo):
    result = tiny_demo
    assert (result.run_dir / "blackbox" / "checkpoints" / "last.ckpt").is_file()
    assert result.artifacts["decompose artifact"] == result.run_dir / "decompose" / "posthoc.pt"
    assert result.artifacts["decompose artifact"].is_file()
    assert (result.run_dir / "decompose" / "gallery" / "prototypes.png").is_file()
    assert result.metrics["decompose test/agreement"] == 1.0
    assert result.metrics["blackbox test/acc"] == result.metrics["decompose test/acc"]
    assert (
        result.run_dir / "protopnet" / "gallery" / "prototypes.png"
    ).is_file()  # pushed at the end
    assert "protopnet test/acc" in result.metrics
    assert (result.run_dir / "evaluate" / "results.md").is_file()
