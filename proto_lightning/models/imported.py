"""Bring your own black box: a classifier trained elsewhere, from its plain state dict, as our black box.

`proto-lightning decompose blackbox=<name> blackbox_weights=<file>` needs no `blackbox` stage: the
named architecture (a torchvision ResNet/DenseNet, or any timm model) is built with the data's class
count, the user's whole state dict is loaded into it (strictly: keys that do not fit are named), and
it is split into our body (`features`) and its own linear classifier, which becomes the head (V, b).
The result is written as a black-box checkpoint, so every later stage (evaluate, protopnet's
`init_from_blackbox`) reads it like one trained here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torchvision
from torch import nn

from proto_lightning.atomic import atomic_torch_save
from proto_lightning.errors import ConfigValueError, IncompatibleWeightsError
from proto_lightning.models.backbones import (
    DENSENETS,
    RESNETS,
    VGGS,
    FeatureBackbone,
    densenet_body,
    resnet_body,
)
from proto_lightning.models.blackbox import OPTIMIZER_DEFAULTS, BlackBoxClassifier
from proto_lightning.models.files import load_state_dict_checked, plain_data, read_state_dict
from proto_lightning.models.timm_backbones import (
    create_timm_model,
    timm_body,
    timm_classifier,
    timm_model_kwargs,
)

log = logging.getLogger(__name__)


def classifier_library(name: str) -> str:
    """Which library builds the classifier `name`: torchvision for its ResNets and DenseNets, else timm."""
    if name in VGGS:
        raise IncompatibleWeightsError(
            f"torchvision {name} classifies with a 3-layer MLP on its flattened 7x7 map, not a linear "
            "layer on a spatial mean, so its logits cannot be decomposed exactly; use a model whose "
            "head is linear after global average pooling (ResNet, DenseNet, timm CNNs, avg-pool ViTs)"
        )
    if name in RESNETS + DENSENETS:
        return "torchvision"
    import timm

    if timm.is_model(name):
        return "timm"
    raise ConfigValueError(
        f"unknown classifier {name!r}: give a torchvision ResNet/DenseNet ({', '.join(RESNETS + DENSENETS)}) "
        "or a timm model name (timm.list_models() lists them)"
    )


def _head_key(model: nn.Module, head: nn.Linear) -> str:
    """The state-dict key of the classifier's weight (e.g. `fc.weight`, `head.fc.weight`)."""
    prefix = next(name for name, module in model.named_modules() if module is head)
    return f"{prefix}.weight"


def _split(name: str, library: str, model: nn.Module) -> tuple[FeatureBackbone, nn.Linear]:
    """A loaded classifier -> (our feature body, its linear classifier)."""
    if library == "timm":
        head = timm_classifier(model, name)
        model.reset_classifier(0)  # the body keeps everything before the classifier
        body, channels = timm_body(model, name)
        return FeatureBackbone(body, channels, name, library), head
    if name in RESNETS:
        return resnet_body(model, name), model.fc
    return densenet_body(model, name), model.classifier


def import_classifier(
    name: str, weights: str | Path, num_classes: int, kwargs: dict[str, Any] | None = None
) -> BlackBoxClassifier:
    """The classifier `name` with the user's state dict `weights`, as our black box (head = its classifier)."""
    library = classifier_library(name)
    kwargs = timm_model_kwargs(kwargs)
    if library == "timm":
        model = create_timm_model(name, num_classes, None, kwargs)
        head = timm_classifier(model, name)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        head = model.fc if name in RESNETS else model.classifier
    state = read_state_dict(Path(weights))
    key = _head_key(model, head)
    if key in state and state[key].shape[0] != num_classes:
        raise IncompatibleWeightsError(
            f"the classifier in {weights} ({key}) predicts {state[key].shape[0]} classes but the "
            f"data has {num_classes}: decompose it on the data it was trained on"
        )
    load_state_dict_checked(model, state, Path(weights))
    backbone, head = _split(name, library, model.eval())
    spec = {"name": name, "library": library, "weights": None, "kwargs": kwargs}
    classifier = BlackBoxClassifier(spec, num_classes, OPTIMIZER_DEFAULTS)
    classifier.net.backbone.load_state_dict(backbone.state_dict())
    classifier.net.head.load_state_dict(head.state_dict())
    log.info("imported %s classifier %s from %s", library, name, weights)
    return classifier


def save_as_checkpoint(model: BlackBoxClassifier, path: Path, source: str | Path) -> Path:
    """Write an imported black box as a black-box checkpoint (tensors and plain values only)."""
    checkpoint = {
        "hyper_parameters": plain_data(dict(model.hparams)),
        "state_dict": {f"net.{k}": v for k, v in model.net.state_dict().items()},
        "pytorch-lightning_version": L.__version__,
        "imported_from": str(Path(source).resolve()),
    }
    return atomic_torch_save(path, checkpoint)
