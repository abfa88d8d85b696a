"""FaithfulnessCallback: evaluate's numbers on the same images, keypoint-less data, resume, bad settings."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from proto_lightning.callbacks import FaithfulnessCallback
from proto_lightning.errors import ConfigValueError
from proto_lightning.metrics.part_consistency import metric_label
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.models.protopnet import ProtoPNet
from proto_lightning.stages.blackbox import run_blackbox
from proto_lightning.stages.protopnet import run_protopnet
from tests.helpers import KilledRun

METRICS = ("deletion_auc", "insertion_auc", "consistency", "stability")


def results_row(run: Path, method: str) -> dict[str, float]:
    with (run / "evaluate" / "results.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["method"] == method)
    return {k: float(row[k]) for k in METRICS}


def logged(metrics_csv: Path) -> list[dict[str, str]]:
    with metrics_csv.open() as f:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]


def test_logged_test_values_equal_evaluate_on_the_same_images(tiny_demo):
    """The demo's decompose and ProtoPNet test runs log deletion/insertion on evaluate's seeded subset
    with its steps (TINY_DEMO): the same numbers as evaluate's table; consistency and stability over
    every test image (images=None) equal the table's, which uses every test image."""
    run = tiny_demo.run_dir
    for stage, method in (("decompose", "Post-hoc PPN"), ("protopnet", "ProtoPNet")):
        table = results_row(run, method)
        for name in ("deletion_auc", "insertion_auc"):
            value = tiny_demo.metrics[f"{stage} test/{name}"]
            assert value == pytest.approx(table[name], abs=1e-6), (stage, name)
    cfg = OmegaConf.load(run / "evaluate" / "config.yaml")
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    callback = FaithfulnessCallback(cfg.evaluation, images=None, steps=8, seed=cfg.seed)
    models = {
        "Post-hoc PPN": PostHocPrototypeNetwork.load(run / "decompose" / "posthoc.pt"),
        "ProtoPNet": ProtoPNet.load_checkpoint(run / "protopnet" / "checkpoints" / "last.ckpt"),
    }
    for method, model in models.items():
        measured = callback.measure(model, datamodule, datamodule.test_set)
        table = results_row(run, method)
        for name in ("consistency", "stability"):  # 48 px: the scaled protocol, named in the key
            key = f"{name}@scaled"
            assert measured[key] == pytest.approx(table[name], abs=1e-6), (method, name)


def test_push_and_validation_keys_are_logged(tiny_demo):
    rows = logged(tiny_demo.run_dir / "protopnet" / "logs" / "metrics.csv")
    keys = set().union(*rows)
    for name in METRICS:  # 48 px: part metrics under the scaled protocol, which their keys name
        name = metric_label(name, "scaled")
        assert {f"val/{name}", f"push/{name}_before", f"push/{name}_after", f"test/{name}"} <= keys
    assert "val/consistency" not in keys  # never the reference protocol's key at 48 px
    blackbox = set().union(*logged(tiny_demo.run_dir / "blackbox" / "logs" / "metrics.csv"))
    assert {"val/deletion_auc", "val/insertion_auc", "test/deletion_auc"} <= blackbox
    assert not any("consistency" in k for k in blackbox)  # Grad-CAM has no prototypes


def test_keypoint_less_data_logs_deletion_and_insertion_only(parts_root, tmp_path: Path):
    """A ProtoPNet on an image folder (no part annotations): no consistency or stability."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for name in ("cars", "dogs"):
            (tmp_path / "folder" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "folder" / split / name / f"{i}.png"
                )
    from tests.helpers import stage_cfg

    cfg = stage_cfg(
        "protopnet",
        tmp_path / "folder",
        tmp_path / "run",
        "data=folder",
        "data.num_workers=0",
        "model.prototypes_per_class=2",
        "model.prototype_dim=16",
        "model.push.log_test_accuracy=false",
        "callbacks.faithfulness.every_n_epochs=1",
    )
    result = run_protopnet(cfg)
    assert {"val/deletion_auc", "val/insertion_auc", "test/deletion_auc"} <= set(result.metrics)
    assert not any(k.endswith(("consistency", "stability")) for k in result.metrics)


def test_a_killed_run_keeps_logging_at_the_same_epochs(stage_config):
    """every_n_epochs=2 logs at epochs 1 and 3, also when the run is killed at epoch 2 and resumed."""
    every = ["callbacks.faithfulness.every_n_epochs=2", "run_test=false", "trainer.max_epochs=4"]
    cfg = stage_config(
        "blackbox",
        *every,
        "+callbacks.kill._target_=tests.helpers.RaiseAtEpoch",
        "+callbacks.kill.epoch=2",
    )
    with pytest.raises(KilledRun):
        run_blackbox(cfg)
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    resumed = run_blackbox(stage_config("blackbox", *every, f"ckpt_path={last}"))
    rows = logged(resumed.run_dir / "logs" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows if "val/deletion_auc" in r] == [1, 3]
    assert [int(r["epoch"]) for r in rows if "val/acc" in r] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"blackbox_explainer": "shap"}, "gradcam, lime"), ({"every_n_epochs": 0}, ">= 1")],
)
def test_bad_settings_are_refused(setting, message):
    evaluation = {"faithfulness": {"steps": 5}}
    with pytest.raises(ConfigValueError, match=message):
        FaithfulnessCallback(evaluation, **setting)


def test_the_module_keeps_its_mode_and_grad_cam_runs_under_inference_mode(tiny_demo):
    """Lightning validates under torch.inference_mode; Grad-CAM needs gradients, so the callback
    steps out of it; a module in train mode (a push) is put back in train mode."""
    from proto_lightning.models import BlackBoxClassifier

    run = tiny_demo.run_dir
    cfg = OmegaConf.load(run / "evaluate" / "config.yaml")
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    (best,) = (run / "blackbox" / "checkpoints").glob("best-*.ckpt")
    module = BlackBoxClassifier.load_checkpoint(best).train()
    callback = FaithfulnessCallback(cfg.evaluation, images=3, steps=4)
    with torch.inference_mode():
        values = callback.measure(module, datamodule, datamodule.test_set)
    assert module.training and set(values) == {"deletion_auc", "insertion_auc"}
    assert all(0.0 <= v <= 1.0 for v in values.values())


def test_training_is_the_same_with_and_without_the_callback(stage_config, tmp_path: Path):
    """The measurement (its loaders draw from the global generator) must not change the shuffles
    and augmentations that follow: a ProtoPNet run with warm-up, joint epochs and pushes ends with
    the same weights, bit for bit, with the callback at every validation and around every push."""
    schedule = [
        "model.schedule.epochs=4",
        "model.schedule.warm_epochs=1",
        "model.schedule.push_start=2",
        "model.schedule.push_every=2",
        "model.schedule.last_layer_iterations=1",
        "model.prototypes_per_class=2",
        "model.prototype_dim=16",
        "trainer.max_epochs=null",
        "run_test=false",
        "callbacks.faithfulness.every_n_epochs=1",
        "callbacks.faithfulness.images=4",
        "callbacks.faithfulness.steps=4",
    ]
    states = []
    for name, switch in (("with", []), ("without", ["callbacks.faithfulness=null"])):
        result = run_protopnet(
            stage_config("protopnet", *schedule, *switch, f"run_dir={tmp_path / name}")
        )
        last = result.artifacts["last checkpoint"]
        states.append(torch.load(last, weights_only=True)["state_dict"])
        assert ("push/deletion_auc_after" in result.metrics) == (name == "with")
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
