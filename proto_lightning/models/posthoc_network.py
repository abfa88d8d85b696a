"""The post-hoc part-prototype network: a frozen black box whose head is a sum of prototype terms.

Plain torch (no Lightning): the Python facade (`proto_lightning.PostHocPPN`) holds one of these; the
CLI's `PostHocPrototypeNetwork` (models/posthoc.py) adds Lightning's test loop on top.

The method page (docs/method.md, eq. 4): y_c(x) = sum_i mean_j (f_j(x) . p~_i) + b_c, which equals the
black box's logit because sum_i p~_i = v_c. Since the mean over locations is linear, the
contribution of prototype i is computed as (mean_j f_j) . p~_i; its heatmap f_j(x) . p~_i is only
formed when explaining. A contribution can be negative: that prototype counts against the class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.explainers.base import to_input_size
from proto_lightning.models.blackbox_net import BlackBoxNet
from proto_lightning.models.files import read_torch_file, require_kind
from proto_lightning.models.frozen import FrozenPrototypes, restore_blackbox, restored_projection
from proto_lightning.prototypes.decomposition import HeadDecomposition, relative_head_error
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


def batched(x: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W), or one image (3, H, W) given without its batch dimension -> (B, 3, H, W)."""
    return x[None] if x.dim() == 3 else x


def network_extras(
    decomposition: HeadDecomposition,
    boxes: Mapping[str, np.ndarray],
    map_size: Sequence[int],
    preprocessing: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    part_names: Sequence[str] | None = None,
    nearest_paths: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """What an artifact records beside the prototypes: the decomposition's intermediate results, the
    nearest patches' boxes (and image files), the map size and the preprocessing (image_size, mean, std)."""
    extras: dict[str, Any] = {
        "bases": decomposition.bases,
        "alpha": decomposition.alpha,
        "beta": decomposition.beta,
        "shift": decomposition.shift,
        "residual_norm": decomposition.residual_norm,
        "objective_even": decomposition.objective_even,
        "objective_refined": decomposition.objective_refined,
        "nmf_objective": decomposition.nmf_objective,
        **boxes,
        "map_size": tuple(int(v) for v in map_size),
        **preprocessing,
        "class_names": list(class_names) if class_names is not None else None,
        "part_names": list(part_names) if part_names is not None else [],
    }
    if nearest_paths is not None:
        extras["nearest_paths"] = ["" if p is None else str(p) for p in nearest_paths]
    return extras


class PostHocNetwork(FrozenPrototypes, nn.Module):
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
        self.register_buffer("bias", bias.float())
        self.projection = projection
        self.extras = dict(extras or {})
        self.metadata: dict[str, Any] = {}

    def relative_head_error(self, dtype: torch.dtype = torch.float64) -> float:
        """||V - V~||_F / ||V||_F, V the black box's head and V~_c = sum_i p~_i, computed in `dtype`."""
        return relative_head_error(self.blackbox.head.weight, self.prototypes, dtype)

    def train(self, mode: bool = True) -> PostHocNetwork:
        """The black box stays in eval mode (BatchNorm statistics frozen) whatever is asked."""
        super().train(mode)
        self.blackbox.eval()
        return self

    def contributions(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Feature map (B, D, H, W) -> per-prototype contributions (B, C, k)."""
        pooled = feature_map.mean(dim=(2, 3))  # (B, D)
        return torch.einsum("bd,ckd->bck", pooled, self.prototypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> logits (B, C) = sum_i contributions + b."""
        return self.contributions(self.blackbox.features(batched(x))).sum(-1) + self.bias

    def prototype_maps_of(self, feature_map: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Feature map (B, D, h, w), classes (B,) -> the classes' prototype maps f . p~_i (B, k, h, w)."""
        return torch.einsum("bdhw,bkd->bkhw", feature_map, self.prototypes[classes])

    @torch.no_grad()
    def prototype_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0), classes (B,) -> the classes' prototype maps (B, k, h, w)."""
        return self.prototype_maps_of(self.blackbox.features(batched(x)), classes)

    @torch.no_grad()
    def heatmaps(self, x: torch.Tensor, targets: torch.Tensor | int) -> torch.Tensor:
        """The class heatmap, sum_i f(h, w) . p~_i = f(h, w) . v_c, at the input size (B, H0, W0).

        Args:
            x: images (B, 3, H0, W0) or one image (3, H0, W0).
            targets: the explained class of each image (B,), or one class for all.

        Returns:
            Heatmaps (B, H0, W0), larger = more evidence for the class (the explainer interface).
        """
        x = batched(x)
        classes = torch.as_tensor(targets, device=x.device).expand(len(x))
        return to_input_size(self.prototype_maps(x, classes).sum(dim=1), x)

    @torch.no_grad()
    def explain(
        self, x: torch.Tensor, target: torch.Tensor | int | None = None
    ) -> list[PrototypeExplanation]:
        """Per image: the predicted (or target) class's prototypes' "this looks like that" terms.

        Args:
            x: images (B, 3, H0, W0) or one image (3, H0, W0).
            target: the class to explain, per image (B,) or one for all; None: the prediction.

        Returns:
            One `PrototypeExplanation` per image: terms ranked by contribution (largest first, a
            negative one counts against the class), their heatmaps and nearest training patches.
        """
        x = batched(x)
        feature_map = self.blackbox.features(x)  # (B, D, H, W)
        contrib = self.contributions(feature_map)  # (B, C, k)
        logits = contrib.sum(-1) + self.bias
        labels = (
            logits.argmax(1)
            if target is None
            else torch.as_tensor(target, device=x.device).expand(len(x))
        )
        heatmaps = self.prototype_maps_of(feature_map, labels)  # (B, k, H, W)
        upsampled = to_input_size(heatmaps.flatten(0, 1), x).view(
            *heatmaps.shape[:2], *x.shape[-2:]
        )
        own = contrib[torch.arange(len(x), device=x.device), labels]  # (B, k)
        return ranked_explanations(self, labels, logits, own, heatmaps, upsampled)

    def nearest_patch(self, label: int, i: int) -> dict[str, Any]:
        """The training patch prototype i of class `label` is shown as (empty before projection)."""
        return nearest_patch(self, label, i)

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
    ) -> PostHocNetwork:
        """Restore an artifact; `blackbox` (a net or checkpoint path) must be the one it was made from.

        An artifact of a black box we rebuild by name restores it itself; one made from a user's own
        model needs that model as `blackbox`, checked by its head and a probe fingerprint.
        `trust_file` unpickles any object (an artifact of format 1, made before artifacts held
        tensors only): only for a file the user made; it also applies to a `blackbox` path.
        """
        state = read_torch_file(
            path,
            "post-hoc artifact",
            "run `proto-lightning decompose` or PostHocPPN.fit first",
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
