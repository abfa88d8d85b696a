"""The ProtoPNet stage: train with the official schedule, test the final (pushed) model, draw its prototypes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from proto_lightning.errors import ConfigValueError
from proto_lightning.evaluation.drawing import draw_prototype_grid
from proto_lightning.loggers import is_wandb
from proto_lightning.models import ProtoPNet
from proto_lightning.models.protopnet_schedule import ProtoPNetSchedule
from proto_lightning.stages.common import (
    StageResult,
    build,
    finish_logging,
    fit_and_test,
    start_run,
)

log = logging.getLogger(__name__)


def with_unused_parameters(strategy: Any) -> Any:
    """The trainer's DDP strategy, told to look for parameters without gradients.

    ProtoPNet's phases (warm, joint, last layer) freeze parameter groups after DDP wrapped the
    model, so some parameters DDP registered get no gradient; without `find_unused_parameters`
    DDP fails with "Expected to have finished reduction in the prior iteration".
    """
    if isinstance(strategy, Mapping) and str(strategy.get("_target_", "")).endswith("DDPStrategy"):
        return {**strategy, "find_unused_parameters": True}
    if isinstance(strategy, str) and strategy.startswith("ddp") and "find_unused" not in strategy:
        return f"{strategy}_find_unused_parameters_true"
    return strategy


def epochs_to_run(cfg: DictConfig) -> int:
    """Lightning epochs to train: the schedule's whole plan (`trainer.max_epochs=null`), or the
    first `trainer.max_epochs` of it; more than the plan is refused, naming the key that sets it."""
    plan = len(ProtoPNetSchedule(**cfg.model.schedule).plan())
    asked = cfg.trainer.get("max_epochs")
    if asked is None:
        return plan
    if asked > plan:
        raise ConfigValueError(
            f"trainer.max_epochs={asked} is more than the ProtoPNet schedule's {plan} Lightning epochs "
            f"(model.schedule.epochs={cfg.model.schedule.epochs} official epochs, with warm-up, pushes "
            "and last-layer passes): set model.schedule.epochs to train longer, or "
            "trainer.max_epochs=null for the whole plan"
        )
    if asked < plan:
        log.info(
            "training the first %d of the schedule's %d Lightning epochs (trainer.max_epochs; "
            "model.schedule.epochs sets the whole plan)",
            asked,
            plan,
        )
    return asked


def run_protopnet(cfg: DictConfig) -> StageResult:
    """Fit ProtoPNet for its plan (resumable), test the final model, write its prototype gallery."""
    with open_dict(cfg):  # the schedule fixes the number of Lightning epochs
        cfg.trainer.max_epochs = epochs_to_run(cfg)
        if cfg.trainer.get("strategy") is not None:
            strategy = cfg.trainer.strategy
            if isinstance(strategy, DictConfig):
                strategy = OmegaConf.to_container(strategy)
            cfg.trainer.strategy = with_unused_parameters(strategy)
    run_dir, datamodule = start_run(cfg)
    model: ProtoPNet = build(cfg.model, _convert_="all", trust_file=cfg.trust_file)
    result = fit_and_test(cfg, "protopnet", model, datamodule, run_dir, test_checkpoint=None)
    if model.projection is not None and model.trainer.is_global_zero:
        path = draw_prototype_grid(model, datamodule, run_dir / "gallery" / "prototypes.png")
        result.artifacts["gallery"] = path
        if is_wandb(model.trainer.logger):
            model.trainer.logger.log_image(key="protopnet/prototypes", images=[str(path)])
    finish_logging(model.trainer.logger)
    return result
