"""Backbone adapters: every family answers `features(x) -> (B, D, H, W)` and `out_channels`.

One adapter per family (a registry of torchvision families and our small CNN; any timm model through
`timm_backbones.py`, `library: timm`); nothing downstream special-cases an architecture. The maps of
torchvision bodies and the small CNN are post-ReLU (non-negative); timm's may be signed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from proto_lightning.errors import ConfigValueError
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


def torchvision_classifier_names() -> list[str]:
    """torchvision's image classification models (`resnet50`, `efficientnet_b0`, `convnext_tiny`, ...)."""
    return torchvision.models.list_models(module=torchvision.models)


def _torchvision_classifier(name: str, weights: str | None) -> FeatureBackbone:
    """The body of any torchvision classifier whose head qualifies (`adapters.split_classifier`)."""
    from proto_lightning.models.adapters import split_classifier  # (adapters builds on this module)

    body = split_classifier(_torchvision_model(name, weights), name=name).backbone
    return FeatureBackbone(body.body, body.out_channels, name)


def _vgg(name: str, weights: str | None) -> FeatureBackbone:
    # conv features (ending in ReLU + max-pool, so non-negative); GAP + linear head replace the MLP
    m = _torchvision_model(name, weights)
    return FeatureBackbone(m.features, 512, name)


def _small_cnn(name: str, weights: str | None) -> FeatureBackbone:
    body = SmallCNN()
    if weights is not None:
        load_state_dict_file(body, Path(weights))
    return FeatureBackbone(body, body[-2].num_features, name)


BACKBONES: dict[str, Callable[[str, str | None], FeatureBackbone]] = {
    **dict.fromkeys(RESNETS + DENSENETS, _torchvision_classifier),
    **dict.fromkeys(VGGS, _vgg),
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
    if name in BACKBONES:
        return BACKBONES[name](name, weights)
    if name in torchvision_classifier_names():
        return _torchvision_classifier(name, weights)
    known = sorted(BACKBONES)
    close = difflib.get_close_matches(name, [*known, *torchvision_classifier_names()], n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigValueError(
        f"unknown backbone {name!r}.{hint} Registered: {known}; any torchvision classifier "
        "(torchvision.models.list_models()) whose head is linear on pooled features; or any timm "
        "model with model/backbone=timm"
    )
