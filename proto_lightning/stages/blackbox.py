"""The black-box stage: fit (or resume) the classifier, then test its best checkpoint; and `test` alone."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from proto_lightning.models import BlackBoxClassifier
from proto_lightning.models.files import require_class_count
from proto_lightning.stages.common import (
    StageResult,
    build,
    build_trainer,
    finish_logging,
    fit_and_test,
    start_run,
)

log = logging.getLogger(__name__)


def run_blackbox(cfg: DictConfig) -> StageResult:
    """Train the configured black box on the configured data; resume from `ckpt_path` if given."""
    run_dir, datamodule = start_run(cfg)
    model: BlackBoxClassifier = build(cfg.model, _convert_="all")
    result = fit_and_test(cfg, "blackbox", model, datamodule, run_dir, test_checkpoint="best")
    finish_logging(model.trainer.logger)
    return result


def run_test(cfg: DictConfig) -> StageResult:
    """Report the test accuracy of a black-box checkpoint on the configured data."""
    run_dir, datamodule = start_run(cfg)
    model = BlackBoxClassifier.load_checkpoint(cfg.ckpt_path, trust_file=cfg.trust_file)
    require_class_count(
        "checkpoint", cfg.ckpt_path, model.hparams.num_classes, datamodule.num_classes, "test"
    )
    trainer = build_trainer(cfg)
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)
    finish_logging(trainer.logger)
    return StageResult(
        "test",
        run_dir,
        {"checkpoint": Path(cfg.ckpt_path)},
        {"test/acc": float(metrics[0]["test/acc"])},
    )
