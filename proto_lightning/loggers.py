"""The stages' loggers: Lightning's CSV logger, except that a run resumed in its own folder keeps its
rows; which of them is W&B; and how figures go to it."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """Appends to an existing metrics.csv (Lightning's writer deletes it) and keeps its columns.

    Overrides Lightning's private `_check_log_dir_exists` hook; the kill-and-resume test of the
    black-box stage fails if a Lightning release changes it.
    """

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` whose metrics.csv survives a killed run resumed in place (`ckpt_path=` + same folder)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer, created on first use; an existing metrics.csv is continued, not replaced."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class QuietWandbLogger(WandbLogger):
    """Lightning's W&B logger without the `anonymous` argument to `wandb.init`: Lightning passes it
    on every run (as None), and current W&B warns on each that the setting has no effect."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)


def is_wandb(logger: Logger | None) -> bool:
    """Whether the logger is W&B (it alone takes images and tables)."""
    return isinstance(logger, WandbLogger)


def log_figures(logger: Logger, prefix: str, paths: Sequence[Path]) -> None:
    """Each figure under its own key `<prefix>/<file stem>`: W&B warns about (and rescales) images
    of different sizes logged under one key."""
    for path in paths:
        logger.log_image(key=f"{prefix}/{path.stem}", images=[str(path)])
