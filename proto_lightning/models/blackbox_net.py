"""The black box the framework sees: features(x) -> (B, D, H, W) -> global average pooling -> linear head (V, b).

Plain torch (no Lightning), so that the Python facade and the post-hoc network load without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from proto_lightning.models.backbones import FeatureBackbone, build_backbone


class BlackBoxNet(nn.Module):
    """logits = V . mean_j f_j(x) + b, with f_j(x) the feature vectors of the backbone's last map.

    Built by name (`BlackBoxNet("resnet50", 200)`, what checkpoints rebuild), or around a classifier
    a user already has, split by `models.adapters` (`BlackBoxNet.of(backbone, head)`).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        weights: str | None = None,
        library: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, weights, library, kwargs)
        self.head = nn.Linear(self.backbone.out_channels, num_classes)

    @classmethod
    def of(cls, backbone: FeatureBackbone, head: nn.Linear) -> BlackBoxNet:
        """A black box made of an existing body and linear head (shared, not copied).

        Example:
            >>> import torch, torchvision
            >>> from proto_lightning.models.adapters import split_classifier
            >>> parts = split_classifier(torchvision.models.resnet18(num_classes=4))
            >>> net = BlackBoxNet.of(parts.backbone, parts.head)
            >>> net(torch.zeros(1, 3, 64, 64)).shape
            torch.Size([1, 4])
        """
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net.backbone, net.head = backbone, head
        return net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> feature map (B, D, H, W)."""
        return self.backbone.features(x)

    def logits_from_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Feature map (B, D, H, W) -> logits (B, C)."""
        return self.head(feature_map.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> logits (B, C)."""
        return self.logits_from_features(self.features(x))
