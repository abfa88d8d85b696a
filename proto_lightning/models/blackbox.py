"""The black box: backbone -> feature map F (B, D, H, W) -> global average pooling -> linear head (V, b)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.models.blackbox_net import BlackBoxNet
from proto_lightning.models.files import (
    checkpoint_hyperparameters,
    read_torch_file,
    require_kind,
)
from proto_lightning.settings import checked_settings

OPTIMIZERS = ("adamw", "sgd")
# Library defaults of `model.optimizer` / `model.scheduler` (conf/model/blackbox.yaml sets the run's).
OPTIMIZER_DEFAULTS = {
    "name": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,  # sgd only
    "nesterov": False,  # sgd only
    "backbone_lr_scale": 1.0,
}
SCHEDULER_DEFAULTS = {"warmup_epochs": 0, "min_lr_ratio": 0.0}


class BlackBoxClassifier(L.LightningModule):
    """Fine-tunes a `BlackBoxNet` with AdamW or SGD and a (warm-up +) cosine learning-rate schedule."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        num_classes: int,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        backbone = dict(backbone)
        optimizer = checked_settings(optimizer, OPTIMIZER_DEFAULTS, "model.optimizer")
        scheduler = checked_settings(scheduler, SCHEDULER_DEFAULTS, "model.scheduler")
        if optimizer["name"] not in OPTIMIZERS:
            raise ValueError(
                f"model.optimizer.name must be one of {OPTIMIZERS}, got {optimizer['name']!r}"
            )
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "num_classes": num_classes,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "label_smoothing": label_smoothing,
            }
        )
        self.net = BlackBoxNet(
            backbone["name"],
            num_classes,
            backbone.get("weights"),
            backbone.get("library"),
            backbone.get("kwargs"),
        )
        self.metrics = nn.ModuleDict(
            {
                f"{split}_acc": MulticlassAccuracy(num_classes, average="micro")
                for split in ("train", "val", "test")
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> logits (B, C)."""
        return self.net(x)

    def _step(self, batch: Mapping[str, torch.Tensor], split: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        metric = self.metrics[f"{split}_acc"]
        metric(logits, batch["label"])
        batch_size = len(batch["label"])
        self.log(
            f"{split}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        self.log(
            f"{split}/acc",
            metric,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            prog_bar=True,
        )
        return loss

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on one training batch."""
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Loss and accuracy on one validation batch."""
        self._step(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Loss and accuracy on one test batch."""
        self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW/SGD with `backbone_lr_scale` on the backbone; linear warm-up then cosine decay per epoch."""
        opt = self.hparams.optimizer
        groups = [
            {
                "params": self.net.backbone.parameters(),
                "lr": opt["lr"] * opt["backbone_lr_scale"],
            },
            {"params": self.net.head.parameters(), "lr": opt["lr"]},
        ]
        if opt["name"] == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=opt["lr"], weight_decay=opt["weight_decay"])
        else:
            optimizer = torch.optim.SGD(
                groups,
                lr=opt["lr"],
                momentum=opt["momentum"],
                weight_decay=opt["weight_decay"],
                nesterov=opt["nesterov"],
            )
        warmup = int(self.hparams.scheduler["warmup_epochs"])
        floor = float(self.hparams.scheduler["min_lr_ratio"])
        total = max(1, int(self.trainer.max_epochs or 1))

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(1, total - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, before any tensor is copied, a checkpoint of another architecture or class count."""
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("backbone", "num_classes"):
            mine = self.hparams[key]["name"] if key == "backbone" else self.hparams[key]
            theirs = saved.get(key, {}).get("name") if key == "backbone" else saved.get(key)
            if theirs != mine:
                raise IncompatibleWeightsError(
                    f"checkpoint has {key}={theirs!r} but this model has {key}={mine!r}; "
                    "resume with the same model/backbone and dataset, or start a new run"
                )

    @classmethod
    def load_checkpoint(
        cls, path: str | Path, map_location: str = "cpu", trust_file: bool = False
    ) -> BlackBoxClassifier:
        """Load a black-box checkpoint with a clear error for a missing, truncated or foreign file
        (read as data; `trust_file` unpickles any object: only for a file the user made)."""
        checkpoint = read_torch_file(
            path,
            "black-box checkpoint",
            "train one with `proto-lightning blackbox`",
            map_location=map_location,
            trust_file=trust_file,
        )
        require_kind(checkpoint, "black-box checkpoint", path)
        params = checkpoint_hyperparameters(
            checkpoint, {"num_classes", "optimizer"}, path, "BlackBoxClassifier"
        )
        model = cls(**params)
        model.net.load_state_dict(
            {
                k.removeprefix("net."): v
                for k, v in checkpoint["state_dict"].items()
                if k.startswith("net.")
            }
        )
        return model
