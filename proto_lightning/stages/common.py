"""What every stage does first: seed, run folder, resolved config, datamodule, logger, trainer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, open_dict

from proto_lightning.config import resolved_container, to_yaml
from proto_lightning.data import PartDataModule

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage leaves behind: its run folder, named artifact paths and headline metrics."""

    stage: str
    run_dir: Path
    artifacts: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [f"[{self.stage}] run folder: {self.run_dir}"]
        lines += [f"  {name}: {path}" for name, path in self.artifacts.items()]
        lines += [f"  {name} = {value:.6g}" for name, value in self.metrics.items()]
        return "\n".join(lines)


def start_run(cfg: DictConfig) -> tuple[Path, PartDataModule]:
    """Seed everything, create the run folder, build the datamodule and record the resolved config."""
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    datamodule: PartDataModule = instantiate(cfg.data)
    if "model" in cfg and "num_classes" in cfg.model:
        with open_dict(cfg):
            cfg.model.num_classes = datamodule.num_classes
    _write_config(cfg, run_dir)
    return run_dir, datamodule


@rank_zero_only
def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    log.info("resolved config written to %s", run_dir / "config.yaml")


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    """Instantiate the configured logger, callbacks (null entries are switched off) and trainer."""
    logger = instantiate(cfg.logger)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **overrides)
    trainer.logger.log_hyperparams(resolved_container(cfg))
    return trainer


def checkpoint_dir(trainer: L.Trainer) -> Path | None:
    """The folder the ModelCheckpoint callback writes to, if there is one."""
    callback = trainer.checkpoint_callback
    return Path(callback.dirpath) if callback is not None and callback.dirpath else None


def logs_location(trainer: L.Trainer) -> Path:
    """Where the configured logger writes (W&B offline runs under <save_dir>/wandb)."""
    logger = trainer.logger
    folder = Path(getattr(logger, "log_dir", None) or logger.save_dir)
    return folder / "wandb" if type(logger).__name__ == "WandbLogger" else folder
