"""The ProtoPNet stage: train with the official schedule, test the final (pushed) model, draw its prototypes."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from proto_lightning.callbacks import draw_prototype_grid
from proto_lightning.models import ProtoPNet
from proto_lightning.models.protopnet_schedule import ProtoPNetSchedule
from proto_lightning.stages.common import StageResult, finish_logging, fit_and_test, start_run


def run_protopnet(cfg: DictConfig) -> StageResult:
    """Fit ProtoPNet for its whole plan (resumable), test the final model, write its prototype gallery."""
    with open_dict(cfg):  # the schedule fixes the number of Lightning epochs
        cfg.trainer.max_epochs = len(ProtoPNetSchedule(**cfg.model.schedule).plan())
    run_dir, datamodule = start_run(cfg)
    model: ProtoPNet = instantiate(cfg.model, _convert_="all")
    result = fit_and_test(cfg, "protopnet", model, datamodule, run_dir, test_checkpoint=None)
    if model.projection is not None and model.trainer.is_global_zero:
        path = draw_prototype_grid(model, datamodule, run_dir / "gallery" / "prototypes.png")
        result.artifacts["gallery"] = path
        if type(model.trainer.logger).__name__ == "WandbLogger":
            model.trainer.logger.log_image(key="protopnet/prototypes", images=[str(path)])
    finish_logging(model.trainer.logger)
    return result
