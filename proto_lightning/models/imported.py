"""Bring your own black box: a classifier trained elsewhere, from its plain state dict, as our black box.

`proto-lightning decompose blackbox=<name> blackbox_weights=<file>` needs no `blackbox` stage: the
named architecture (any torchvision classifier whose head qualifies, or any timm model) is built
with the data's class count, the user's whole state dict is loaded into it (strictly: keys that do not fit are named), and
it is split into our body (`features`) and its own linear classifier, which becomes the head (V, b).
The result is written as a black-box checkpoint, so every later stage (evaluate, protopnet's
`init_from_blackbox`) reads it like one trained here.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import nn

from proto_lightning.atomic import atomic_torch_save
from proto_lightning.errors import ConfigValueError
from proto_lightning.models.adapters import ClassifierParts, check_probe, split_classifier
from proto_lightning.models.backbones import FeatureBackbone, torchvision_classifier_names
from proto_lightning.models.blackbox import OPTIMIZER_DEFAULTS, BlackBoxClassifier
from proto_lightning.models.files import (
    load_state_dict_checked,
    plain_data,
    read_state_dict,
    require_class_count,
)
from proto_lightning.models.timm_backbones import (
    create_timm_model,
    probe_size,
    timm_body,
    timm_model_kwargs,
)

log = logging.getLogger(__name__)


def _head_key(model: nn.Module, head: nn.Linear) -> str:
    """The state-dict key of the classifier's weight (e.g. `fc.weight`, `head.fc.weight`)."""
    prefix = next(name for name, module in model.named_modules() if module is head)
    return f"{prefix}.weight"


def _fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether `state` holds exactly `model`'s keys (its classifier's shape aside)."""
    return model.state_dict().keys() == state.keys()


def _build(name: str, library: str, num_classes: int, kwargs: dict) -> nn.Module:
    if library == "timm":
        return create_timm_model(name, num_classes, None, kwargs)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def classifier_model(
    name: str, state: dict[str, torch.Tensor], num_classes: int, kwargs: dict
) -> tuple[nn.Module, str]:
    """The classifier `name` built to receive `state`, and its library (torchvision or timm).

    A name both libraries know (resnet50, efficientnet_b0, convnext_tiny ...) is built by the one
    whose parameter names the file holds, torchvision's first; a name neither knows is refused with
    the closest names.
    """
    import timm

    libraries = [
        lib
        for lib, known in (
            ("torchvision", name in torchvision_classifier_names()),
            ("timm", timm.is_model(name)),
        )
        if known
    ]
    if not libraries:
        close = difflib.get_close_matches(name, torchvision_classifier_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigValueError(
            f"unknown classifier {name!r}.{hint} Give a torchvision classification model "
            "(torchvision.models.list_models()) or a timm model name (timm.list_models())"
        )
    for library in libraries:
        model = _build(name, library, num_classes, kwargs if library == "timm" else {})
        if _fits(model, state):
            return model, library
    first = libraries[0]  # neither fits: the first one's checks name what is wrong
    return _build(name, first, num_classes, kwargs if first == "timm" else {}), first


def _split(
    name: str, library: str, model: nn.Module, parts: ClassifierParts
) -> tuple[FeatureBackbone, nn.Linear]:
    """A loaded classifier (ours, built here) -> (our feature body, its linear classifier)."""
    if library == "timm":
        model.reset_classifier(0)  # our own copy: the body keeps everything before the classifier
        body, channels = timm_body(model, name)
        return FeatureBackbone(body, channels, name, library), parts.head
    return FeatureBackbone(parts.backbone.body, parts.backbone.out_channels, name), parts.head


def import_classifier(
    name: str,
    weights: str | Path,
    num_classes: int,
    kwargs: dict[str, Any] | None = None,
    trust_file: bool = False,
    class_names: list[str] | None = None,
) -> BlackBoxClassifier:
    """The classifier `name` with the user's state dict `weights`, as our black box (head = its classifier).

    `trust_file` unpickles any object in `weights` (only for a file the user made); `class_names`
    (the data's) are named when the file's head predicts another number of classes.
    """
    kwargs = timm_model_kwargs(kwargs)
    state = read_state_dict(Path(weights), trust_file)
    model, library = classifier_model(name, state, num_classes, kwargs)
    parts = split_classifier(model, name=name)  # refuses an MLP or class-token head first
    head = parts.head
    key = _head_key(model, head)
    if key in state and state[key].shape[0] != num_classes:
        require_class_count(
            f"the classifier ({key}) in",
            weights,
            state[key].shape[0],
            num_classes,
            "decompose",
            class_names,
        )
    settings = f"blackbox={name} (and blackbox_kwargs)"
    load_state_dict_checked(model, state, Path(weights), settings=settings)
    check_probe(model.eval(), parts, probe_size(model))
    backbone, head = _split(name, library, model, parts)
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
