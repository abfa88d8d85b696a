"""Test-only helpers: Lightning callbacks importable by Hydra `_target_`, and the CLI as a user runs it."""

import subprocess
import sys

import lightning as L


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m proto_lightning <args>` in a new process; fails the test (with its stderr) on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "proto_lightning", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


class KilledRun(RuntimeError):
    """Stands for a run killed halfway (pre-emption, OOM, Ctrl-C)."""


class RaiseAtEpoch(L.Callback):
    """Raises `KilledRun` when training reaches `epoch`, after that epoch's checkpoint of the previous one."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KilledRun(f"killed at the start of epoch {self.epoch}")
