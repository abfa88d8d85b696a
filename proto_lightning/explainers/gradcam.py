"""Grad-CAM (Selvaraju et al., ICCV 2017) of the black box, from captum's LayerGradCam."""

from __future__ import annotations

import torch
from captum.attr import LayerGradCam
from torch import nn

from proto_lightning.explainers.base import to_input_size
from proto_lightning.models.blackbox import BlackBoxNet


class _TappedBlackBox(nn.Module):
    """The black box with an identity layer on its last feature map, for captum to hook."""

    def __init__(self, net: BlackBoxNet) -> None:
        super().__init__()
        self.net = net
        self.feature_map = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logits_from_features(self.feature_map(self.net.features(x)))


class GradCAMExplainer:
    """ReLU of the gradient-weighted last feature map, upsampled bilinearly to the input (captum's
    `LayerGradCam`, equal to pytorch-grad-cam's `GradCAM` on the same layer).

    Args:
        net: the black box (`BlackBoxNet`: features -> mean -> linear head).

    Example:
        >>> # GradCAMExplainer(net).explain(images, net(images).argmax(1))  # (B, H, W)
    """

    name = "Grad-CAM"

    def __init__(self, net: BlackBoxNet) -> None:
        self.net = net.eval()
        self._tapped = _TappedBlackBox(net)
        self._gradcam = LayerGradCam(self._tapped, self._tapped.feature_map)

    def classifier(self, images: torch.Tensor) -> torch.Tensor:
        """The black box's logits (B, C)."""
        return self.net(images)

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Grad-CAM heatmaps for the target classes.

        Args:
            images: normalised images (B, 3, H, W).
            targets: the class to explain per image (B,).

        Returns:
            Heatmaps (B, H, W) at the input size, non-negative.
        """
        with torch.enable_grad():
            maps = self._gradcam.attribute(images, target=targets, relu_attributions=True)
        return to_input_size(maps[:, 0].detach(), images)  # (B, h, w) -> (B, H, W)
