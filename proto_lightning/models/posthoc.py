"""The post-hoc part-prototype network as a LightningModule: `PostHocNetwork` plus its test loop.

The network, its artifact and its explanations live in `posthoc_network.py` (plain torch, what the
Python facade uses); this adds accuracy and agreement with the black box for `Trainer.test`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from proto_lightning.models.posthoc_network import (
    ARTIFACT_FORMAT,
    READABLE_FORMATS,
    IncompatibleArtifactError,
    PostHocNetwork,
)

__all__ = [
    "ARTIFACT_FORMAT",
    "READABLE_FORMATS",
    "IncompatibleArtifactError",
    "PostHocPrototypeNetwork",
]


class PostHocPrototypeNetwork(PostHocNetwork, L.LightningModule):
    """`PostHocNetwork` with Lightning's validation and test steps (accuracy, agreement, and the
    number of images they counted)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """`PostHocNetwork`'s arguments (blackbox, prototypes, bias, projection, extras)."""
        super().__init__(*args, **kwargs)
        C = self.num_classes
        self.metrics = torch.nn.ModuleDict(
            {
                f"{s}_{m}": MulticlassAccuracy(C, average="micro")
                for s in ("val", "test")
                for m in ("acc", "agreement")
            }
            | {f"{s}_images": SumMetric() for s in ("val", "test")}  # images counted, all ranks
        )

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> dict[str, torch.Tensor]:
        feature_map = self.blackbox.features(batch["image"])
        logits = self.contributions(feature_map).sum(-1) + self.bias
        blackbox_logits = self.blackbox.logits_from_features(feature_map)
        n = len(batch["label"])
        self.metrics[f"{split}_acc"](logits, batch["label"])
        self.metrics[f"{split}_agreement"](logits, blackbox_logits.argmax(1))
        self.log(f"{split}/acc", self.metrics[f"{split}_acc"], batch_size=n)
        self.log(f"{split}/agreement", self.metrics[f"{split}_agreement"], batch_size=n)
        self.metrics[f"{split}_images"](n)
        self.log(f"{split}/images", self.metrics[f"{split}_images"], batch_size=n)
        return {"logits": logits, "blackbox_logits": blackbox_logits}

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """Accuracy and agreement with the black box on a validation batch."""
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Accuracy and agreement with the black box on a test batch."""
        return self._eval_step(batch, "test")
