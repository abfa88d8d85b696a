"""What every stage does first: seed, run folder, resolved config, datamodule, logger, trainer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import wandb
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from proto_lightning.config import resolved_container, to_yaml
from proto_lightning.data import PartDataModule
from proto_lightning.environment import environment
from proto_lightning.errors import ProtoLightningError
from proto_lightning.loggers import is_wandb
from proto_lightning.models.files import read_torch_file

log = logging.getLogger(__name__)

# metrics of the fit worth reporting with a stage's result: epoch times, the last validation
# (accuracy, the faithfulness callback's metrics), accuracy and faithfulness around a push
FIT_METRIC_PREFIXES = ("time/", "push/", "val/")


@dataclass
class StageResult:
    """What a stage leaves behind: its run folder, named artifact paths and headline metrics."""

    stage: str
    run_dir: Path
    artifacts: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    closing: str | None = None  # a last line for the reader (the demo: where its report is)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [f"[{self.stage}] run folder: {self.run_dir}"]
        lines += [f"  {name}: {path}" for name, path in self.artifacts.items()]
        lines += [f"  {name} = {value:.6g}" for name, value in self.metrics.items()]
        lines += [self.closing] if self.closing else []
        return "\n".join(lines)


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Hydra's `instantiate`, but our own errors (bad file, bad key) come out as themselves, not
    wrapped in Hydra's InstantiationException, so the CLI prints their one-line message."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ProtoLightningError):
            raise err.__cause__ from None
        raise


def start_run(cfg: DictConfig, unused: tuple[str, ...] = ()) -> tuple[Path, PartDataModule]:
    """Seed everything, create the run folder, build the datamodule and record the resolved config
    (without the `unused` groups, which the shared defaults bring but the stage never reads) and,
    under `environment`, the package versions and devices (`proto_lightning.environment`)."""
    L.seed_everything(cfg.seed, workers=True)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)  # a failure below is marked in it
    datamodule: PartDataModule = build(cfg.data)
    if "model" in cfg and "num_classes" in cfg.model:
        with open_dict(cfg):
            cfg.model.num_classes = datamodule.num_classes
    return open_run(cfg, unused), datamodule


def open_run(cfg: DictConfig, unused: tuple[str, ...] = ()) -> Path:
    """Create the run folder and record the resolved config there (without the `unused` groups)
    with the environment (`proto_lightning.environment`)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, run_dir, unused)
    return run_dir


@rank_zero_only
def _write_config(cfg: DictConfig, run_dir: Path, unused: tuple[str, ...]) -> None:
    used = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in unused])
    recorded = to_yaml(used) + to_yaml(OmegaConf.create({"environment": environment()}))
    (run_dir / "config.yaml").write_text(recorded)
    log.info("resolved config written to %s", run_dir / "config.yaml")


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    """Instantiate the configured logger, callbacks (null entries are switched off) and trainer."""
    logger = build(cfg.logger)
    callbacks = [build(c) for c in cfg.callbacks.values() if c is not None]
    trainer: L.Trainer = build(cfg.trainer, logger=logger, callbacks=callbacks, **overrides)
    trainer.logger.log_hyperparams(resolved_container(cfg))
    return trainer


def checkpoint_dir(trainer: L.Trainer) -> Path | None:
    """The folder the ModelCheckpoint callback writes to, if there is one."""
    callback = trainer.checkpoint_callback
    return Path(callback.dirpath) if callback is not None and callback.dirpath else None


def logs_location(trainer: L.Trainer) -> dict[str, Path]:
    """{"logs": where the configured logger writes} (W&B offline runs under <save_dir>/wandb);
    empty when it writes nowhere (fast_dev_run replaces the logger with a dummy)."""
    logger = trainer.logger
    folder = getattr(logger, "log_dir", None) or logger.save_dir
    if folder is None:
        return {}
    return {"logs": Path(folder) / "wandb" if is_wandb(logger) else Path(folder)}


def fit_and_test(
    cfg: DictConfig,
    stage: str,
    model: L.LightningModule,
    datamodule: PartDataModule,
    run_dir: Path,
    test_checkpoint: str | None,
    **trainer_overrides,
) -> StageResult:
    """Fit (resuming from `cfg.ckpt_path`), then test the `best` checkpoint or, with None, the final model."""
    if cfg.ckpt_path is not None:  # refuse a missing file, or one holding code, before any work
        read_torch_file(
            cfg.ckpt_path,
            "checkpoint to resume (ckpt_path)",
            "pass a .ckpt file of an earlier run",
            trust_file=cfg.trust_file,
        )
    trainer = build_trainer(cfg, **trainer_overrides)
    # a resumed checkpoint is read as data too (weights_only), unless the user trusts the file
    trainer.fit(
        model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=not cfg.trust_file
    )
    after_fit = {k: float(v) for k, v in trainer.callback_metrics.items()}  # test() resets them
    result = StageResult(stage, run_dir, metrics={"epochs": float(trainer.current_epoch)})
    result.metrics.update({k: v for k, v in after_fit.items() if k.startswith(FIT_METRIC_PREFIXES)})
    ckpt_dir = checkpoint_dir(trainer)
    if ckpt_dir is not None:
        result.artifacts["checkpoints"] = ckpt_dir
        if trainer.checkpoint_callback.best_model_path:
            result.artifacts["best checkpoint"] = Path(trainer.checkpoint_callback.best_model_path)
        if (ckpt_dir / "last.ckpt").is_file():
            result.artifacts["last checkpoint"] = ckpt_dir / "last.ckpt"
    if cfg.run_test:
        best = ckpt_dir is not None and trainer.checkpoint_callback.best_model_path
        use_best = test_checkpoint == "best" and bool(best)
        if test_checkpoint == "best" and not use_best:  # val_fraction=0, fast_dev_run
            log.info("no best checkpoint (no validation): testing the final weights (last.ckpt)")
        metrics = trainer.test(
            model,
            datamodule=datamodule,
            ckpt_path="best" if use_best else None,
            verbose=False,
            weights_only=True,
        )
        result.metrics.update({k: float(v) for k, v in metrics[0].items()})
    result.artifacts.update(logs_location(trainer))
    return result


def stage_device(cfg: DictConfig) -> torch.device:
    """The device a stage's own (non-Trainer) work runs on: CUDA when present unless the trainer asks for CPU."""
    wants_cpu = str(cfg.trainer.get("accelerator", "auto")) == "cpu"
    return torch.device("cuda" if torch.cuda.is_available() and not wants_cpu else "cpu")


def finish_logging(logger: Logger | None) -> None:
    """Close the stage's logger; a W&B run is finished so that the next stage of a chain gets its own run."""
    if logger is None:
        return
    logger.finalize("success")
    if is_wandb(logger) and rank_zero_only.rank == 0 and wandb.run is not None:
        wandb.finish()


def stage_config(cfg: DictConfig, stage: str, **replace) -> DictConfig:
    """A chain's config re-targeted at one stage, in a sub-folder of the chain's run folder.

    Every stage of one chain (the demo, decompose + evaluate) logs to the same W&B group,
    `<group>-<run folder name>`, so the dashboard shows the chain's runs (one per stage) together.
    """
    sub = OmegaConf.create(
        OmegaConf.to_container(cfg, resolve=False)
    )  # ${run_dir} follows the new folder
    with open_dict(sub):
        sub.stage = stage
        sub.run_dir = f"{cfg.run_dir}/{stage}"
        sub.group = f"{cfg.group}-{Path(cfg.run_dir).name}"
        for key, value in replace.items():
            sub[key] = value
    return sub
