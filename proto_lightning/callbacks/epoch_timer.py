"""Log the wall-clock seconds of every training epoch (`time/epoch`), to compare models' cost."""

from __future__ import annotations

import time

import lightning as L


class EpochTimerCallback(L.Callback):
    """Seconds from the start of a training epoch to its end (validation included)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("time/epoch", time.perf_counter() - self._start, on_epoch=True)
