"""One interface for every explanation method: (images, targets) -> heatmaps (B, H, W) at input size."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class Explainer(Protocol):
    """A heatmap method and the classifier whose decisions it explains (used by deletion/insertion)."""

    name: str

    def classifier(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> logits (B, C) of the explained model."""
        ...

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Heatmaps of the target classes, larger = more evidence.

        Args:
            images: normalised images (B, 3, H, W).
            targets: the class to explain per image (B,).

        Returns:
            Heatmaps (B, H, W) at the input size.
        """
        ...


@runtime_checkable
class PrototypeExplainer(Explainer, Protocol):
    """A part-prototype network: also answers each class's prototypes' activation maps."""

    prototypes_per_class: int

    def prototype_maps(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), classes (B,) -> the classes' prototypes' activation maps (B, k, h, w)."""
        ...


def to_input_size(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Feature-map heatmaps (B, h, w) -> (B, H, W) bilinearly upsampled to the images' size."""
    return F.interpolate(
        maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]
