"""Backbone adapters: every family answers `features(x) -> (B, D, H, W)` (post-ReLU) and `out_channels`.

One adapter per family (timm-style registry); nothing downstream special-cases an architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.models.files import read_torch_file

log = logging.getLogger(__name__)


class FeatureBackbone(nn.Module):
    """A feature extractor with a non-negative last feature map of `out_channels` channels.

    The body runs in the channels-last memory layout (weights and activations), the layout oneDNN
    and cuDNN convolutions are fastest in (a 1.3x faster training step and 2x faster inference of
    the quick-start CNN on 2 CPU cores); the feature map it returns is contiguous as usual.
    """

    def __init__(self, body: nn.Module, out_channels: int, name: str) -> None:
        super().__init__()
        self.body = body.to(memory_format=torch.channels_last)
        self.out_channels = out_channels
        self.name = name

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> feature map (B, D, H, W), non-negative."""
        return self.body(x.contiguous(memory_format=torch.channels_last)).contiguous()

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


def load_state_dict_file(
    module: nn.Module, path: Path, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load a state dict saved with `torch.save` into `module`, or explain what does not fit."""
    state = read_torch_file(path, "weight file")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise IncompatibleWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong_shape = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise IncompatibleWeightsError(
            f"weights in {path} do not fit {type(module).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(wrong_shape)} of another shape (e.g. {wrong_shape[:3]}). "
            "Is it a checkpoint of another architecture? Pick the matching model/backbone."
        )
    module.load_state_dict(state, strict=False)
    log.info("loaded %d tensors from %s", len(state), path)


def _resnet(name: str, weights: str | None) -> FeatureBackbone:
    m = _torchvision_model(name, weights)
    body = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    return FeatureBackbone(body, m.fc.in_features, name)


def _vgg(name: str, weights: str | None) -> FeatureBackbone:
    # conv features (ending in ReLU + max-pool, so non-negative); GAP + linear head replace the MLP
    m = _torchvision_model(name, weights)
    return FeatureBackbone(m.features, 512, name)


def _densenet(name: str, weights: str | None) -> FeatureBackbone:
    # torchvision applies the final ReLU in forward(); the adapter makes it part of the features
    m = _torchvision_model(name, weights)
    return FeatureBackbone(nn.Sequential(m.features, nn.ReLU()), m.classifier.in_features, name)


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


def build_backbone(name: str, weights: str | None = None) -> FeatureBackbone:
    """Build a registered backbone; `weights` is None, a torchvision weight name or a local file."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}")
    return BACKBONES[name](name, weights)
