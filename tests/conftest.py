"""Shared fixtures: a tiny generated part dataset and fast stage configs (CPU, seconds)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from omegaconf import DictConfig

from proto_lightning.data.generate import make_dataset
from tests.helpers import TINY, TINY_DEMO, stage_cfg

warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped where torch sees no CUDA device (lightning-hydra-template's
    `RunIf(min_gpus=1)`)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def parts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated part dataset (4 classes x 8 images, 48 px), shared by the session."""
    return make_dataset(tmp_path_factory.mktemp("data") / "parts", **TINY)


@pytest.fixture
def stage_config(parts_root: Path, tmp_path: Path):
    """Compose a stage's config with fast overrides; `run_dir` is set as a Hydra run would set it."""

    def build(stage: str, *overrides: str) -> DictConfig:
        return stage_cfg(stage, parts_root, tmp_path / "run", *overrides)

    return build


@pytest.fixture(scope="session")
def tiny_demo(parts_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One run of the whole demo chain on the tiny dataset, shared by the tests that read its outputs."""
    from proto_lightning.stages.demo import run_demo

    run = tmp_path_factory.mktemp("demo") / "run"
    return run_demo(stage_cfg("demo", parts_root, run, *TINY_DEMO))
