"""The post-hoc part-prototype network: a frozen black box whose head is a sum of prototype terms.

DESIGN.md 2.4: y_c(x) = sum_i mean_j (f_j(x) . p~_i) + b_c, which equals the black box's logit because
sum_i p~_i = v_c. Since the mean over locations is linear, the contribution of prototype i is
computed as (mean_j f_j) . p~_i; its heatmap f_j(x) . p~_i is only formed when explaining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.models.blackbox import BlackBoxNet
from proto_lightning.models.files import read_torch_file, require_kind
from proto_lightning.models.frozen import FrozenPrototypes, restore_blackbox, restored_projection
from proto_lightning.prototypes.decomposition import relative_head_error
from proto_lightning.prototypes.network import (
    PrototypeExplanation,
    nearest_patch,
    ranked_explanations,
)
from proto_lightning.prototypes.projection import Projection

# format 2 holds tensors and plain values only (read with weights_only=True); format 1 held numpy
# arrays, which only a full unpickle reads: it is read behind `trust_file=True` alone
ARTIFACT_FORMAT = "proto-lightning/posthoc-ppn/2"
READABLE_FORMATS = (ARTIFACT_FORMAT, "proto-lightning/posthoc-ppn/1")


class IncompatibleArtifactError(IncompatibleWeightsError):
    """A post-hoc artifact that is truncated, of another format, or of another black box."""


class PostHocPrototypeNetwork(FrozenPrototypes, L.LightningModule):
    """Frozen `blackbox` + prototypes (C, k, D) + bias (C,); logits equal the black box's."""

    def __init__(
        self,
        blackbox: BlackBoxNet,
        prototypes: torch.Tensor,
        bias: torch.Tensor,
        projection: Projection | None = None,
        extras: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.attach(blackbox, prototypes, IncompatibleArtifactError)
        C = self.num_classes
        self.register_buffer("bias", bias.float())
        self.projection = projection
        self.extras = dict(extras or {})
        self.metrics = torch.nn.ModuleDict(
            {
                f"{s}_{m}": MulticlassAccuracy(C, average="micro")
                for s in ("val", "test")
                for m in ("acc", "agreement")
            }
        )

    def relative_head_error(self, dtype: torch.dtype = torch.float64) -> float:
        """||V - V~||_F / ||V||_F, V the black box's head and V~_c = sum_i p~_i, computed in `dtype`."""
        return relative_head_error(self.blackbox.head.weight, self.prototypes, dtype)

    def train(self, mode: bool = True) -> PostHocPrototypeNetwork:
        """The black box stays in eval mode (BatchNorm statistics frozen) whatever Lightning asks."""
        super().train(mode)
        self.blackbox.eval()
        return self

    def contributions(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Feature map (B, D, H, W) -> per-prototype contributions (B, C, k)."""
        pooled = feature_map.mean(dim=(2, 3))  # (B, D)
        return torch.einsum("bd,ckd->bck", pooled, self.prototypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> logits (B, C) = sum_i contributions + b."""
        return self.contributions(self.blackbox.features(x)).sum(-1) + self.bias

    @torch.no_grad()
    def explain(
        self, x: torch.Tensor, target: torch.Tensor | int | None = None
    ) -> list[PrototypeExplanation]:
        """Per image: predicted (or target) class, its prototypes' contributions, heatmaps and nearest patches."""
        feature_map = self.blackbox.features(x)  # (B, D, H, W)
        contrib = self.contributions(feature_map)  # (B, C, k)
        logits = contrib.sum(-1) + self.bias
        labels = (
            logits.argmax(1)
            if target is None
            else torch.as_tensor(target, device=x.device).expand(len(x))
        )
        chosen = self.prototypes[labels]  # (B, k, D)
        heatmaps = torch.einsum("bdhw,bkd->bkhw", feature_map, chosen)  # (B, k, H, W)
        upsampled = F.interpolate(heatmaps, size=x.shape[-2:], mode="bilinear", align_corners=False)
        own = contrib[torch.arange(len(x), device=x.device), labels]  # (B, k)
        return ranked_explanations(self, labels, logits, own, heatmaps, upsampled)

    def nearest_patch(self, label: int, i: int) -> dict[str, Any]:
        """The training patch prototype i of class `label` is shown as (empty before projection)."""
        return nearest_patch(self, label, i)

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> dict[str, torch.Tensor]:
        feature_map = self.blackbox.features(batch["image"])
        logits = self.contributions(feature_map).sum(-1) + self.bias
        blackbox_logits = self.blackbox.logits_from_features(feature_map)
        n = len(batch["label"])
        self.metrics[f"{split}_acc"](logits, batch["label"])
        self.metrics[f"{split}_agreement"](logits, blackbox_logits.argmax(1))
        self.log(f"{split}/acc", self.metrics[f"{split}_acc"], batch_size=n)
        self.log(f"{split}/agreement", self.metrics[f"{split}_agreement"], batch_size=n)
        return {"logits": logits, "blackbox_logits": blackbox_logits}

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """Accuracy and agreement with the black box on a validation batch."""
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Accuracy and agreement with the black box on a test batch."""
        return self._eval_step(batch, "test")

    # ---- artifact -------------------------------------------------------------------------------

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write one self-contained artifact atomically (temp file in the same folder, then rename).

        It holds tensors and plain values only, so it reads back with `torch.load(weights_only=True)`.
        """
        return self.write_artifact(path, ARTIFACT_FORMAT, metadata, bias=self.bias.cpu())

    @classmethod
    def load(
        cls,
        path: str | Path,
        blackbox: BlackBoxNet | str | Path | None = None,
        map_location: str = "cpu",
        trust_file: bool = False,
    ) -> PostHocPrototypeNetwork:
        """Restore an artifact; `blackbox` (a net or checkpoint path) must be the one it was made from.

        `trust_file` unpickles any object (an artifact of format 1, made before artifacts held
        tensors only): only for a file the user made; it also applies to a `blackbox` path.
        """
        state = read_torch_file(
            path,
            "post-hoc artifact",
            "run `proto-lightning decompose` first",
            error=IncompatibleArtifactError,
            map_location=map_location,
            trust_file=trust_file,
        )
        require_kind(state, "post-hoc artifact (posthoc.pt)", path, IncompatibleArtifactError)
        if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise IncompatibleArtifactError(
                f"{path} is not a post-hoc PPN artifact of format {ARTIFACT_FORMAT} (found {found!r})"
            )
        blackbox = restore_blackbox(
            state["blackbox"], blackbox, path, IncompatibleArtifactError, trust_file
        )
        projection = restored_projection(state)
        model = cls(blackbox, state["prototypes"], state["bias"], projection, state["extras"])
        model.metadata = state["metadata"]
        return model
