"""Log how exactly the post-hoc network reconstructs the black box's head (docs/method.md, "Metrics": head reconstruction)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from proto_lightning.models.posthoc import PostHocPrototypeNetwork


class HeadReconstructionCallback(L.Callback):
    """Relative head error ||V - V~||_F / ||V||_F and max / mean |logit gap| on val and test.

    Top-1 agreement with the black box is logged by the module itself (`<split>/agreement`).
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.max_gap = torch.zeros(())
        self.sum_gap = torch.zeros((), dtype=torch.float64)
        self.count = 0

    def _accumulate(self, outputs: Any) -> None:
        gap = (outputs["logits"] - outputs["blackbox_logits"]).abs().detach().cpu()  # (B, C)
        self.max_gap = torch.maximum(self.max_gap, gap.max())
        self.sum_gap += gap.double().sum()
        self.count += gap.numel()

    def _log(self, trainer: L.Trainer, pl_module: PostHocPrototypeNetwork, split: str) -> None:
        # under DDP: the largest gap of any rank, and the mean over every rank's logits (shards
        # may be uneven: a mean of the ranks' means would weigh a short shard too much)
        strategy = trainer.strategy
        max_gap = strategy.all_gather(self.max_gap.to(pl_module.device)).max()
        totals = torch.tensor([float(self.sum_gap), self.count], dtype=torch.float64)
        totals = strategy.reduce(totals.to(pl_module.device), reduce_op="sum")
        metrics = {
            f"{split}/relative_head_error": pl_module.relative_head_error(),
            f"{split}/max_logit_gap": float(max_gap),
            f"{split}/mean_logit_gap": float(totals[0] / totals[1].clamp_min(1)),
        }
        for name, value in metrics.items():
            pl_module.log(name, value, sync_dist=False)  # every rank holds the whole-set value
        self._reset()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._accumulate(outputs)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._accumulate(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")
