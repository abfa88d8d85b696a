"""The quick-start: every stage in turn on the generated part dataset (today: the black box)."""

from __future__ import annotations

from omegaconf import DictConfig

from proto_lightning.stages.blackbox import run_blackbox
from proto_lightning.stages.common import StageResult


def run_demo(cfg: DictConfig) -> StageResult:
    """Run the quick-start chain and return the last stage's summary with all artifacts."""
    blackbox = run_blackbox(cfg)
    return StageResult("demo", blackbox.run_dir, blackbox.artifacts, blackbox.metrics)
