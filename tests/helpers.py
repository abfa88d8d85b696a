"""Test-only helpers: the tiny dataset's settings, fast stage configs, the CLI as a user runs it, and
Lightning callbacks importable by Hydra `_target_`."""

import subprocess
import sys
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, open_dict

from proto_lightning.config import compose_config

VENV_BIN = Path(sys.executable).parent  # where the console script `proto-lightning` is installed
TINY = {"classes": 4, "per_class": 8, "size": 48, "seed": 0, "train_fraction": 0.5}

# the demo chain at toy sizes: every stage, seconds on CPU
TINY_DEMO = [
    "trainer.max_epochs=1",
    "protopnet.schedule.epochs=2",
    "protopnet.schedule.warm_epochs=1",
    "protopnet.schedule.last_layer_iterations=1",
    "protopnet.prototypes_per_class=2",
    "protopnet.prototype_dim=16",
    "evaluation.faithfulness.images=6",
    "evaluation.faithfulness.steps=8",
    "evaluation.lime.samples=20",
    "evaluation.lime.segments=10",
    "evaluation.bootstrap.resamples=50",
    "evaluation.figures.images=2",
    # the faithfulness callbacks on evaluate's subset and steps: their test/ values equal its table's
    "callbacks.faithfulness.images=6",
    "callbacks.faithfulness.every_n_epochs=1",
    "callbacks.faithfulness.steps=8",
    "decompose_callbacks.faithfulness.images=6",
    "decompose_callbacks.faithfulness.steps=8",
]


def fast_overrides(data_root: Path, run_dir: Path) -> list[str]:
    """Overrides that make any stage run in seconds on CPU, writing into `run_dir`."""
    return [
        f"data.root={data_root}",
        "data.image_size=48",
        "data.batch_size=8",
        "data.val_fraction=0.25",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "logger=csv",
        "callbacks.progress=null",
        "callbacks.faithfulness.images=4",  # the faithfulness callback on a few images, few steps
        "callbacks.faithfulness.steps=4",
        f"hydra.run.dir={run_dir}",
    ]


def stage_cfg(stage: str, data_root: Path, run_dir: Path, *overrides: str) -> DictConfig:
    """A stage's config with fast overrides, `run_dir` set as a Hydra run would set it."""
    cfg = compose_config(stage, [*fast_overrides(data_root, run_dir), *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
        del cfg["hydra"]
    return cfg


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m proto_lightning <args>` in a new process; fails the test (with its stderr) on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "proto_lightning", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


class KilledRun(RuntimeError):
    """Stands for a run killed halfway (pre-emption, OOM, Ctrl-C)."""


class RaiseAtEpoch(L.Callback):
    """Raises `KilledRun` when training reaches `epoch`, after that epoch's checkpoint of the previous one."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KilledRun(f"killed at the start of epoch {self.epoch}")


def assert_drawn(path: Path, min_side: int = 32) -> None:
    """`path` decodes as a PNG picture of at least `min_side` pixels a side with more than one colour."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", path
        pixels = image.convert("RGB")
        assert min(pixels.size) >= min_side, (path, pixels.size)
        assert len(pixels.getcolors(maxcolors=1 << 24)) > 1, f"{path} is one flat colour"
