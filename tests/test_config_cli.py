"""Configuration and command line: stages listed, overrides composed, unknown keys refused with close matches."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proto_lightning.cli import STAGES, console_main, main
from proto_lightning.config import compose_config, validate_overrides
from proto_lightning.data.transforms import Augmentation
from proto_lightning.errors import ConfigKeyError
from proto_lightning.models import BlackBoxClassifier, ProtoPNet
from proto_lightning.stages.blackbox import run_blackbox
from tests.helpers import VENV_BIN


def test_console_script_and_module_list_the_stages():
    for command in (
        [str(VENV_BIN / "proto-lightning"), "--help"],
        [sys.executable, "-m", "proto_lightning"],
    ):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        for stage in [*STAGES, "make-dataset"]:
            assert stage in out


def test_help_config_printing_and_key_errors_never_load_torch():
    """`--help`, `--cfg job` and a refused key answer in well under a second: no torch or Lightning."""
    script = (
        "import sys\n"
        "from proto_lightning.cli import console_main, main\n"
        "main(['--help'])\n"
        "main(['blackbox', '--cfg', 'job'])\n"
        "assert console_main(['decompose', 'model.nmf.iterationz=3']) == 1\n"
        "loaded = sorted(m for m in ('torch', 'lightning', 'torchvision') if m in sys.modules)\n"
        "print('LOADED', loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED []" in done.stdout
    assert "unknown config key 'model.nmf.iterationz'" in done.stderr


def test_issue_example_composes():
    cfg = compose_config(
        "blackbox",
        [
            "data=cub",
            "data.root=/data/CUB_200_2011",
            "model/backbone=resnet50",
            "trainer.max_epochs=30",
        ],
    )
    assert cfg.data.root == "/data/CUB_200_2011" and cfg.data.crop_to_bbox is True
    assert cfg.model.backbone.name == "resnet50" and cfg.trainer.max_epochs == 30
    assert cfg.data._target_.endswith("CUB200DataModule")


def test_unknown_key_lists_close_matches():
    with pytest.raises(
        ConfigKeyError, match=r"unknown config key 'trainer.max_epoch'.*trainer.max_epochs"
    ):
        validate_overrides("blackbox", ["trainer.max_epoch=3"])
    with pytest.raises(ConfigKeyError, match=r"data.image_size"):
        validate_overrides("blackbox", ["data=cub", "data.img_size=3"])
    validate_overrides("blackbox", ["+trainer.fast_dev_run=true"])  # '+' adds a key on purpose


def test_unknown_group_option_fails_listing_options(capsys):
    with pytest.raises(ConfigKeyError, match="resnet50"):
        validate_overrides("blackbox", ["model/backbone=resnet5"])
    assert console_main(["blackbox", "model/backbone=resnet5"]) == 1  # one message, no traceback
    err = capsys.readouterr().err
    assert (
        "Options (conf/model/backbone/)" in err
        and "Did you mean: resnet50" in err
        and "Traceback" not in err
    )


def test_a_missing_optional_logger_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    hidden = {"tensorboard", "tensorboardX"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    with pytest.raises(ConfigKeyError, match=r'pip install -e "\.\[tensorboard\]"'):
        validate_overrides("blackbox", ["logger=tensorboard"])


@pytest.mark.parametrize(
    ("stage", "overrides", "message"),
    [
        ("blackbox", ["trainer.max_epochs=abc"], "expected a number"),
        ("blackbox", ["run_test=yes"], "expected true or false"),
        (
            "decompose",
            ["blackbox_ckpt=x.ckpt", "evaluate_after=true", "objective=Post-hoc PPN/consistancy"],
            "Post-hoc PPN/consistency",
        ),
    ],
)
def test_bad_values_fail_before_any_work(stage, overrides, message, tmp_path, capsys):
    """No run folder, data or W&B run is made for a value that cannot work."""
    assert console_main([stage, *overrides, f"paths.runs={tmp_path / 'runs'}"]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_exits_nonzero_on_a_wrong_key(capsys):
    assert console_main(["blackbox", "trainer.max_epoch=3"]) == 1
    assert "trainer.max_epochs" in capsys.readouterr().err
    assert console_main(["nonsense"]) == 2


def test_cli_runs_a_stage_and_prints_where_things_are(parts_root: Path, tmp_path: Path):
    from tests.helpers import VENV_BIN, fast_overrides

    command = [
        str(VENV_BIN / "proto-lightning"),
        "blackbox",
        *fast_overrides(parts_root, tmp_path / "run"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run folder: {tmp_path / 'run'}" in done.stdout
    assert "best checkpoint:" in done.stdout and "test/acc" in done.stdout
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["image_size"] == 48 and saved["trainer"]["max_epochs"] == 1
    overrides = yaml.safe_load((tmp_path / "run" / ".hydra" / "overrides.yaml").read_text())
    typed = [o for o in fast_overrides(parts_root, tmp_path / "run") if not o.startswith("hydra.")]
    assert overrides[: len(typed)] == typed  # what the user typed, Hydra's own settings aside


def test_make_dataset_tool(tmp_path: Path):
    assert (
        main(
            [
                "make-dataset",
                "--out",
                str(tmp_path / "d"),
                "--classes",
                "2",
                "--per-class",
                "4",
                "--train-fraction",
                "0.25",
                "--size",
                "32",
            ]
        )
        == tmp_path / "d"  # main from Python returns what the tool made
    )
    assert len((tmp_path / "d" / "images.txt").read_text().splitlines()) == 8
    split = (tmp_path / "d" / "train_test_split.txt").read_text().split()[1::2]
    assert split == ["1", "0", "0", "0"] * 2  # one of each class's 4 images trains


def test_an_experiments_model_settings_reach_only_that_model():
    # quick-start's black-box optimizer (lr 1e-2, wd 5e-4) must not leak into ProtoPNet's (wd 1e-3)
    blackbox = compose_config("blackbox", ["experiment=quickstart"]).model.optimizer
    assert (blackbox.lr, blackbox.weight_decay) == (0.01, 0.0005)
    protopnet = compose_config("protopnet", ["experiment=quickstart"]).model.optimizer
    assert protopnet.weight_decay == 0.001 and "lr" not in protopnet
    demo = compose_config("demo")
    # the demo's later stages take the black box's final epoch ("best" by step), see conf/demo.yaml
    assert (demo.callbacks.checkpoint.monitor, demo.callbacks.checkpoint.mode) == ("step", "max")
    assert compose_config("blackbox", ["experiment=quickstart"]).callbacks.checkpoint.monitor == (
        "val/acc"
    )
    assert demo.model.optimizer.lr == 0.01 and demo.protopnet.optimizer.weight_decay == 0.001
    assert compose_config("blackbox").model.optimizer.lr == 0.001  # no experiment: the defaults
    override = ["experiment=quickstart", "model.optimizer.lr=0.02"]
    assert compose_config("blackbox", override).model.optimizer.lr == 0.02  # the command line wins


def test_model_and_augmentation_settings_refuse_unknown_keys():
    backbone = {"name": "small_cnn"}
    with pytest.raises(ConfigKeyError, match=r"\['lr'\] in model.optimizer"):
        ProtoPNet(backbone=backbone, num_classes=2, optimizer={"lr": 0.1})
    with pytest.raises(ConfigKeyError, match=r"model.loss.*Did you mean: cluster"):
        ProtoPNet(backbone=backbone, num_classes=2, loss={"clustr": 0.8})
    with pytest.raises(ConfigKeyError, match=r"model.optimizer.*Did you mean: weight_decay"):
        BlackBoxClassifier(backbone, 2, {"name": "sgd", "lr": 0.1, "weight_decai": 0.1})
    with pytest.raises(ConfigKeyError, match=r"model.scheduler.*Did you mean: warmup_epochs"):
        BlackBoxClassifier(backbone, 2, {"lr": 0.1}, scheduler={"warmup_epoch": 2})
    with pytest.raises(ConfigKeyError, match=r"data.augment.*Did you mean: hflip"):
        Augmentation.from_config({"hflp": 0.5})
    model = ProtoPNet(backbone=backbone, num_classes=2, optimizer={"weight_decay": 0.5})
    assert model.optimizer_settings["weight_decay"] == 0.5
    assert model.optimizer_settings["last_layer"] == 1e-4  # the official default kept


def test_debug_group_sets_the_trainer_flags(stage_config):
    """debug=fdr|overfit|profiler (conf/debug/), in the template's style; fdr runs a stage end to end."""
    flags = {
        "fdr": {"fast_dev_run": True},
        "overfit": {"overfit_batches": 3, "max_epochs": 20},
        "profiler": {"profiler": "simple", "max_epochs": 1},
    }
    for name, expected in flags.items():
        trainer = compose_config("blackbox", [f"debug={name}"]).trainer
        assert {k: trainer[k] for k in expected} == expected
    result = run_blackbox(stage_config("blackbox", "debug=fdr"))
    assert result.metrics["epochs"] == 1 and "test/acc" in result.metrics


def test_faiss_import_probing_is_not_shown():
    """FAISS's loader logs its CPU-feature probing at INFO on import (eight lines, one of them a
    caught ModuleNotFoundError), which shows wherever logging is set up first (pytest, notebooks)."""
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "import proto_lightning.prototypes.projection"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "faiss.loader" not in done.stdout + done.stderr
