"""The black-box stage on CPU: fit, checkpoints, resolved config, resume, kill-and-resume, test, bad checkpoints."""

import csv
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate

from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.models import BlackBoxClassifier
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.stages.blackbox import run_blackbox, run_test
from tests.helpers import KilledRun, assert_drawn


def test_tiny_fit_writes_checkpoints_config_and_test_accuracy(stage_config):
    cfg = stage_config("blackbox", "trainer.max_epochs=3")
    result = run_blackbox(cfg)
    ckpts = result.artifacts["checkpoints"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2
    # the best checkpoint is the epoch of highest val/acc in the CSV log (the first, on a tie)
    with (result.run_dir / "logs" / "metrics.csv").open() as f:
        val = [(float(r["val/acc"]), int(r["epoch"])) for r in csv.DictReader(f) if r["val/acc"]]
    best_epoch = max(val, key=lambda v: (v[0], -v[1]))[1]
    best = result.artifacts["best checkpoint"]
    assert torch.load(best, weights_only=True)["epoch"] == best_epoch
    # test/acc is the best checkpoint's accuracy, recomputed by a plain loop over the test split
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    net = BlackBoxClassifier.load_checkpoint(best).net.eval()
    with torch.no_grad():
        correct = [int(net(s["image"][None]).argmax()) == s["label"] for s in datamodule.test_set]
    assert result.metrics["test/acc"] == pytest.approx(sum(correct) / len(correct))
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 4 and saved["trainer"]["max_epochs"] == 3
    assert "${" not in (result.run_dir / "config.yaml").read_text()  # resolved


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
    width = state["state_dict"]["net.head.weight"].shape[1]
    state["state_dict"]["net.head.weight"] = torch.zeros(9, width)
    state["state_dict"]["net.head.bias"] = torch.zeros(9)
    other = tmp_path / "nine.ckpt"
    torch.save(state, other)
    with pytest.raises(IncompatibleWeightsError, match="predicts 9 classes"):
        run_test(stage_config("test", f"ckpt_path={other}"))


def test_wandb_logger_runs_offline(stage_config, capfd):
    cfg = stage_config(
        "blackbox", "logger=wandb", "run_test=false", "trainer.limit_train_batches=1"
    )
    result = run_blackbox(cfg)
    runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    printed = capfd.readouterr()
    assert "anonymous" not in printed.out + printed.err  # W&B's warning on Lightning's argument


def test_demo_chains_the_stages(tiny_demo):
    result = tiny_demo
    last = torch.load(result.run_dir / "blackbox" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # trainer.max_epochs=1
    assert result.artifacts["decompose artifact"] == result.run_dir / "decompose" / "posthoc.pt"
    posthoc = PostHocPrototypeNetwork.load(result.artifacts["decompose artifact"])
    assert tuple(posthoc.prototypes.shape[:2]) == (4, 3)  # 4 classes, k = 3
    assert result.metrics["decompose test/agreement"] == 1.0
    assert result.metrics["blackbox test/acc"] == result.metrics["decompose test/acc"]
    assert_drawn(result.run_dir / "decompose" / "gallery" / "prototypes.png")
    assert_drawn(result.run_dir / "protopnet" / "gallery" / "prototypes.png")  # pushed at the end
    table = (result.run_dir / "evaluate" / "results.md").read_text().splitlines()  # 3 decimals
    rows = [line.split(" | ")[0].lstrip("| ") for line in table if line.startswith("| ")][1:]
    assert rows == ["black box", "Post-hoc PPN", "ProtoPNet", "KMEx", "Grad-CAM", "LIME (quick)"]
    accuracy = next(line for line in table if line.startswith("| black box |")).split(" | ")[1]
    assert float(accuracy.split(" ")[0]) == pytest.approx(
        result.metrics["blackbox test/acc"], abs=6e-4
    )
    protopnet = next(line for line in table if line.startswith("| ProtoPNet |")).split(" | ")[1]
    assert float(protopnet.split(" ")[0]) == pytest.approx(
        result.metrics["protopnet test/acc"], abs=6e-4
    )
