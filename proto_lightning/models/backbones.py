"""Backbone adapters: every family answers `features(x) -> (B, D, H, W)` and `out_channels`.

One adapter per family (a registry of torchvision families and our small CNN; any timm model through
`timm_backbones.py`, `library: timm`); nothing downstream special-cases an architecture. The maps of
torchvision bodies and the small CNN are post-ReLU (non-negative); timm's may be signed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from proto_lightning.models.files import load_state_dict_file
from proto_lightning.models.timm_backbones import create_timm_model, timm_body, timm_model_kwargs


class FeatureBackbone(nn.Module):
    """A feature extractor whose last feature map has `out_channels` channels.

    By default the body runs in the channels-last memory layout (weights and activations), the layout
    oneDNN and cuDNN convolutions are fastest in (a 1.3x faster training step and 2x faster inference
    of the quick-start CNN on 2 CPU cores); the feature map it returns is contiguous as usual. A body
    made of a user's own modules keeps their layout (`channels_last=False`): we do not change it.
    `name` is None for a body that cannot be rebuilt by name (a user's own model).
    """

    def __init__(
        self,
        body: nn.Module,
        out_channels: int,
        name: str | None,
        library: str | None = None,
        kwargs: dict | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.body = body.to(memory_format=torch.channels_last) if channels_last else body
        self.out_channels = out_channels
        self.name = name
        self.library = library  # what rebuilds it: build_backbone(name, None, library, kwargs)
        self.kwargs = dict(kwargs or {})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> feature map (B, D, H, W)."""
        if x.dim() == 3:  # one image without its batch dimension
            x = x[None]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x).contiguous()

    forward = features


class SmallCNN(nn.Sequential):
    """Conv-BN-ReLU blocks with max-pooling between them: a black box that trains on a CPU."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        layers: list[nn.Module] = []
        in_ch = 3
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [
                nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            in_ch = width
        super().__init__(*layers)


RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VGGS = ("vgg16", "vgg19")
DENSENETS = ("densenet121", "densenet161")
CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # torchvision heads, replaced by our own


def _torchvision_model(name: str, weights: str | None) -> nn.Module:
    """A torchvision model with no, named (downloaded to TORCH_HOME) or local-file weights."""
    if weights is None or Path(str(weights)).suffix in {".pt", ".pth", ".bin"}:
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            load_state_dict_file(model, Path(weights), ignore_prefixes=CLASSIFIER_PREFIXES)
        return model
    return torchvision.models.get_model(name, weights=weights)


def resnet_body(m: nn.Module, name: str) -> FeatureBackbone:
    """A torchvision ResNet's layers up to its last block (its `avgpool` and `fc` left out)."""
    body = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    return FeatureBackbone(body, m.fc.in_features, name)


def densenet_body(m: nn.Module, name: str) -> FeatureBackbone:
    """A torchvision DenseNet's features with the final ReLU its forward() applies."""
    return FeatureBackbone(nn.Sequential(m.features, nn.ReLU()), m.classifier.in_features, name)


def _resnet(name: str, weights: str | None) -> FeatureBackbone:
    return resnet_body(_torchvision_model(name, weights), name)


def _vgg(name: str, weights: str | None) -> FeatureBackbone:
    # conv features (ending in ReLU + max-pool, so non-negative); GAP + linear head replace the MLP
    m = _torchvision_model(name, weights)
    return FeatureBackbone(m.features, 512, name)


def _densenet(name: str, weights: str | None) -> FeatureBackbone:
    return densenet_body(_torchvision_model(name, weights), name)


def _small_cnn(name: str, weights: str | None) -> FeatureBackbone:
    body = SmallCNN()
    if weights is not None:
        load_state_dict_file(body, Path(weights))
    return FeatureBackbone(body, body[-2].num_features, name)


BACKBONES: dict[str, Callable[[str, str | None], FeatureBackbone]] = {
    **dict.fromkeys(RESNETS, _resnet),
    **dict.fromkeys(VGGS, _vgg),
    **dict.fromkeys(DENSENETS, _densenet),
    "small_cnn": _small_cnn,
}


LIBRARIES = ("torchvision", "timm")  # `model.backbone.library`; torchvision's also holds small_cnn


def build_backbone(
    name: str, weights: str | None = None, library: str | None = None, kwargs=None
) -> FeatureBackbone:
    """Build a backbone: a registered one (`library` None or torchvision: `weights` None, a
    torchvision weight name or a local file) or any timm model (`library="timm"`, `kwargs` to
    `timm.create_model`, `weights` None, a local file or a pretrained tag)."""
    if library == "timm":
        kwargs = timm_model_kwargs(kwargs)
        body, channels = timm_body(create_timm_model(name, 0, weights, kwargs), name)
        return FeatureBackbone(body, channels, name, library, kwargs)
    if library not in (None, "torchvision"):
        raise ValueError(f"model.backbone.library must be one of {LIBRARIES}, got {library!r}")
    if name not in BACKBONES:
        raise KeyError(
            f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}, or any timm model with "
            "model/backbone=timm"
        )
    return BACKBONES[name](name, weights)
