"""Test-only Lightning callbacks, importable by Hydra `_target_` from test configs."""

import lightning as L


class KilledRun(RuntimeError):
    """Stands for a run killed halfway (pre-emption, OOM, Ctrl-C)."""


class RaiseAtEpoch(L.Callback):
    """Raises `KilledRun` when training reaches `epoch`, after that epoch's checkpoint of the previous one."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KilledRun(f"killed at the start of epoch {self.epoch}")
