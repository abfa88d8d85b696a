"""Shared fixtures: a tiny generated part dataset and fast stage configs (CPU, seconds)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from proto_lightning.config import compose_config
from proto_lightning.data.generate import make_dataset

warnings.filterwarnings("ignore", message=".*LeafSpec.*")

TINY = {"classes": 4, "per_class": 8, "size": 48, "seed": 0}


@pytest.fixture(scope="session")
def parts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated part dataset (4 classes x 8 images, 48 px), shared by the session."""
    return make_dataset(tmp_path_factory.mktemp("data") / "parts", **TINY)


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
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture
def stage_config(parts_root: Path, tmp_path: Path):
    """Compose a stage's config with fast overrides; `run_dir` is set as a Hydra run would set it."""

    def build(stage: str, *overrides: str) -> DictConfig:
        cfg = compose_config(stage, [*fast_overrides(parts_root, tmp_path / "run"), *overrides])
        with open_dict(cfg):
            cfg.run_dir = str(tmp_path / "run")
            del cfg["hydra"]
        return cfg

    return build


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
]


@pytest.fixture(scope="session")
def tiny_demo(parts_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One run of the whole demo chain on the tiny dataset, shared by the tests that read its outputs."""
    from proto_lightning.stages.demo import run_demo

    run = tmp_path_factory.mktemp("demo") / "run"
    cfg = compose_config("demo", [*fast_overrides(parts_root, run), *TINY_DEMO])
    with open_dict(cfg):
        cfg.run_dir = str(run)
        del cfg["hydra"]
    return run_demo(cfg)
