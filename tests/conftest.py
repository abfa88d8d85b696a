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
