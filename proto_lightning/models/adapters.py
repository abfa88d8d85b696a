"""Any trained classifier -> the two parts the method needs: a body giving a feature map and a linear head.

The post-hoc decomposition is exact when logits = V . mean_hw(f(x)) + b: a linear head on the spatial
mean of a feature map f (B, D, H, W) (docs/method.md). `split_classifier` finds f and the head:
  - torchvision ResNet, DenseNet, RegNet, EfficientNet, MobileNetV2 and ConvNeXt (whose LayerNorm
    after pooling is folded into the map as for timm, `timm_backbones.fold_pooled_layernorm`);
  - any timm model whose head averages its map or its patch tokens (`timm_backbones.py`);
  - anything else from `features=` (the layer whose output is the map, or a callable images -> map)
    and `head=` (its `nn.Linear`).
torchvision's MobileNetV3 and VGG (an MLP head) and class-token ViTs are refused with the reason.

One probe check then decides every case (`check_probe`): on random images, head(mean_hw(f(x)))
must equal model(x); otherwise the refusal says which part fails and why (max pooling, a class
token, something after the head). The user's model is never changed: its modules are shared, not
copied, converted or reset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from proto_lightning.errors import ConfigValueError
from proto_lightning.models.backbones import FeatureBackbone
from proto_lightning.models.timm_backbones import (
    PROBE_TOLERANCE,
    NotDecomposableError,
    TimmFeatureMap,
    fold_pooled_layernorm,
    probe_size,
    refuse_token_heads,
    timm_classifier,
)

PROBE_IMAGES = 2
PROBE_SEED = 0


@dataclass
class ClassifierParts:
    """A classifier split for the method: `backbone.features(x)` (B, D, H, W) and `head` (V, b)."""

    backbone: FeatureBackbone
    head: nn.Linear
    family: str  # e.g. "torchvision ResNet", "timm", "custom"


class LayerOutput(nn.Module):
    """The output of one layer of `model` on images: the whole model runs, a hook catches the map.

    The hook exists only during a call, so the user's model keeps no trace of it.
    """

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> the layer's output (B, D, H, W)."""
        caught: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda m, i, out: caught.append(out))
        try:
            self.model(x)
        finally:
            handle.remove()
        if not caught or not isinstance(caught[0], torch.Tensor):
            raise NotDecomposableError(
                f"features= names a {type(self.layer).__name__} that the model's forward never "
                "calls (or that returns no tensor): name the layer whose output is the feature map"
            )
        return caught[0]


class CallableMap(nn.Module):
    """A function images -> (B, D, H, W) as a module (e.g. `features=model.forward_features`)."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the function's map."""
        return self.function(x)


class PooledLayerNormMap(nn.Module):
    """A body followed by a head that pools, then applies a LayerNorm (torchvision ConvNeXt): the map
    whose spatial mean is that normalised vector (`fold_pooled_layernorm`)."""

    def __init__(self, features: nn.Module, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.features, self.norm = features, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised map (B, D, H, W)."""
        return fold_pooled_layernorm(self.features(x), self.norm)


def sole_linear(classifier: nn.Module, family: str) -> nn.Linear:
    """The linear layer of a classifier that is `Linear` or `Sequential(Dropout..., Linear)`; any other
    layer in it (an activation, a second linear layer) makes it an MLP head, refused with the reason."""
    layers = list(classifier) if isinstance(classifier, nn.Sequential) else [classifier]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    others = [type(m).__name__ for m in layers if not isinstance(m, nn.Linear | nn.Dropout)]
    if len(linears) != 1 or others:
        kinds = ", ".join(type(m).__name__ for m in layers)
        raise NotDecomposableError(
            f"{family} classifies with an MLP ({kinds}), not one linear layer on pooled features, "
            "so its logits are not a sum over locations and cannot be decomposed exactly; use a "
            "model whose head is linear after global average pooling (ResNet, DenseNet, "
            "EfficientNet, RegNet, ConvNeXt, most timm CNNs, average-pooled ViTs)"
        )
    return linears[0]


def _torchvision_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear, str] | None:
    """(body, head, family) of a torchvision classifier of a known family; None for any other model.

    The bodies' layouts are the ones checkpoints of the named backbones hold (`backbones.py`).
    """
    from torchvision import models as tv

    if isinstance(model, tv.ResNet):
        m = model
        body = nn.Sequential(
            m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4
        )
        return body, m.fc, "torchvision ResNet"
    if isinstance(model, tv.DenseNet):  # forward() applies a ReLU after `features`
        return nn.Sequential(model.features, nn.ReLU()), model.classifier, "torchvision DenseNet"
    if isinstance(model, tv.RegNet):
        return nn.Sequential(model.stem, model.trunk_output), model.fc, "torchvision RegNet"
    if isinstance(model, tv.EfficientNet | tv.MobileNetV2):
        family = f"torchvision {type(model).__name__}"
        return model.features, sole_linear(model.classifier, family), family
    if isinstance(model, tv.ConvNeXt):  # classifier: LayerNorm2d, Flatten, Linear
        norm, head = model.classifier[0], model.classifier[-1]
        return PooledLayerNormMap(model.features, norm), head, "torchvision ConvNeXt"
    if isinstance(model, tv.MobileNetV3 | tv.VGG):
        sole_linear(model.classifier, f"torchvision {type(model).__name__}")  # raises: an MLP
    if isinstance(model, tv.VisionTransformer):
        raise NotDecomposableError(
            "torchvision's VisionTransformer classifies its class token, not a mean over patch "
            "tokens, so its logits are not V . mean_hw(f) + b; use a timm ViT created with "
            "global_pool='avg' and trained or fine-tuned with that head"
        )
    return None


def is_timm_model(model: nn.Module) -> bool:
    """Whether `model` is one of timm's (its class lives in the timm package)."""
    return type(model).__module__.startswith("timm.")


def _given_parts(
    model: nn.Module, features: nn.Module | Callable | None, head: nn.Module | None
) -> tuple[nn.Module, nn.Linear, str]:
    """(body, head, "custom") from the user's `features=` and `head=`."""
    if features is None or head is None:
        raise NotDecomposableError(
            f"cannot tell the body and head of a {type(model).__name__}: pass features=<the layer "
            "whose output is the last feature map (B, D, H, W), or a callable images -> map> and "
            "head=<its nn.Linear classifier>"
        )
    if not isinstance(head, nn.Linear):
        raise NotDecomposableError(
            f"head= must be the classifier's nn.Linear (its V, b), got a {type(head).__name__}"
        )
    if isinstance(features, nn.Module) and any(m is features for m in model.modules()):
        return LayerOutput(model, features), head, "custom"
    if isinstance(features, nn.Module):
        return features, head, "custom"
    if callable(features):
        return CallableMap(features), head, "custom"
    raise NotDecomposableError(f"features= must be a module or a callable, got {features!r}")


def split_classifier(
    model: nn.Module,
    features: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    head: nn.Linear | None = None,
    name: str | None = None,
) -> ClassifierParts:
    """Find the feature-map body and the linear head of `model` (shared with it, not copied).

    Args:
        model: the trained classifier, images (B, 3, H0, W0) -> logits (B, C).
        features: for a model of another family, the layer whose output is the last feature map
            (a submodule of `model`, read with a forward hook), or a callable images -> (B, D, H, W).
        head: with `features`, the model's `nn.Linear` classifier.
        name: the architecture's registered name when the body can be rebuilt by it (checkpoints
            made by the CLI); None for a model that only its owner can rebuild.

    Returns:
        The body as a `FeatureBackbone` (the model's own layout kept) and the head.

    Raises:
        NotDecomposableError: the head is an MLP, reads a class token, or cannot be found.

    Example:
        >>> import torchvision
        >>> parts = split_classifier(torchvision.models.resnet18(num_classes=4))
        >>> parts.family, parts.head.out_features, parts.backbone.out_channels
        ('torchvision ResNet', 4, 512)
    """
    if features is not None or head is not None:
        body, linear, family = _given_parts(model, features, head)
    elif (found := _torchvision_parts(model)) is not None:
        body, linear, family = found
    elif is_timm_model(model):
        label = name or type(model).__name__
        refuse_token_heads(model, label)
        body, linear, family = TimmFeatureMap(model), timm_classifier(model, label), "timm"
    else:
        body, linear, family = _given_parts(model, None, None)  # raises, saying what to pass
    library = "timm" if family == "timm" else "torchvision"
    backbone = FeatureBackbone(
        body, linear.in_features, name, library if name else None, channels_last=False
    )
    return ClassifierParts(backbone, linear, family)


def probe_images(size: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed random probe (PROBE_IMAGES, 3, H, W), drawn on the CPU, then moved to `device`."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(PROBE_IMAGES, 3, *size, generator=generator).to(device)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter is (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _why_not_exact(
    fmap: torch.Tensor, head_input: torch.Tensor | None, head: nn.Linear, logits: torch.Tensor
) -> str:
    """Which part of head(mean_hw(f(x))) == model(x) fails, and the likely reason."""
    if head_input is None:
        return "the model's forward never calls the given head"
    if head_input.dim() != 2 or head_input.shape[1] != fmap.shape[1]:
        return (
            f"the head reads a {tuple(head_input.shape[1:])} input, the feature map has "
            f"D={fmap.shape[1]} channels: give the last feature map before the pooling"
        )
    if _relative_gap(head(head_input), logits) > PROBE_TOLERANCE:
        return (
            "the model's output is not its head's output: something follows the head (an MLP, a "
            "softmax or a temperature)"
        )
    if _relative_gap(fmap.amax(dim=(2, 3)), head_input) <= PROBE_TOLERANCE:
        return "the head reads a maximum over locations (max pooling), not their mean"
    return (
        "the head does not read the spatial mean of the feature map (a class token, attention "
        "pooling, or layers between the feature map and the pooling)"
    )


@torch.no_grad()
def check_probe(model: nn.Module, parts: ClassifierParts, size: Sequence[int]) -> None:
    """Refuse `model` unless head(mean_hw(features(x))) equals model(x) on a random probe of `size`.

    Raises:
        NotDecomposableError: naming which of the two parts fails and why.
    """
    x = probe_images(size, model_device(model))
    seen: list[torch.Tensor] = []
    handle = parts.head.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    fmap = parts.backbone.features(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise NotDecomposableError("model(x) must return logits (B, C) for the probe images")
    if fmap.dim() != 4:
        raise NotDecomposableError(
            f"the features give a {tuple(fmap.shape)} tensor, not a map (B, D, H, W)"
        )
    gap = _relative_gap(parts.head(fmap.mean(dim=(2, 3))), logits)
    if gap > PROBE_TOLERANCE:
        reason = _why_not_exact(fmap, seen[0] if seen else None, parts.head, logits)
        raise NotDecomposableError(
            f"this {parts.family} model cannot be decomposed exactly: head(mean_hw(features(x))) "
            f"differs from model(x) by {gap:.2g} (relative) on a probe: {reason}"
        )


@torch.no_grad()
def probe_fingerprint(backbone: FeatureBackbone, size: Sequence[int]) -> torch.Tensor:
    """The body's pooled features (PROBE_IMAGES, D) on the fixed probe: what tells a model from another."""
    x = probe_images(size, model_device(backbone))
    return backbone.features(x).mean(dim=(2, 3)).float().cpu()


@dataclass(frozen=True)
class Preprocessing:
    """How images reach the model: input size (None: any) and per-channel mean and std (None: unknown)."""

    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def disagreements(self, other: Preprocessing, tol: float = 1e-3) -> list[str]:
        """Each setting both declare and that differs: 'mean (0.5, 0.5, 0.5) against (0.485, ...)'."""
        found = []
        for key in ("image_size", "mean", "std"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine is None or theirs is None:
                continue
            a, b = (
                torch.tensor(mine, dtype=torch.float64),
                torch.tensor(theirs, dtype=torch.float64),
            )
            if a.shape != b.shape or (a - b).abs().max() > tol:
                found.append(f"{key} {_plain(mine)} against {_plain(theirs)}")
        return found

    def as_dict(self) -> dict[str, Any]:
        """Plain values for an artifact."""
        return {"image_size": self.image_size, "mean": self.mean, "std": self.std}


def _plain(value: Any) -> Any:
    return tuple(round(float(v), 4) for v in value) if isinstance(value, Sequence) else value


def declared_preprocessing(model: nn.Module) -> Preprocessing | None:
    """What the model says its inputs must be: a timm model's `pretrained_cfg` mean and std, and the
    image size of a model that only takes one (a ViT with a fixed patch grid); None when it says nothing.

    A CNN takes any image size, so its configured training size is not required of the data.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping) or "mean" not in cfg or "std" not in cfg:
        return None
    patch_embed = getattr(model, "patch_embed", None)
    fixed = patch_embed is not None and getattr(patch_embed, "strict_img_size", False)
    size = probe_size(model)[0] if fixed else None
    return Preprocessing(size, tuple(cfg["mean"]), tuple(cfg["std"]))


class PreprocessingMismatchError(ConfigValueError):
    """The data's image size, mean or std disagree with what the model declares it was trained with."""


def require_preprocessing(declared: Preprocessing | None, given: Preprocessing, where: str) -> None:
    """Refuse data preprocessing that disagrees with the model's declared one, naming both values."""
    if declared is None:
        return
    differ = declared.disagreements(given)
    if differ:
        raise PreprocessingMismatchError(
            f"the model declares other preprocessing than {where}: "
            + "; ".join(f"model {d.replace(' against ', ', data ')}" for d in differ)
            + ". Give the data the model's values, or turn the check off "
            "(check_preprocessing=False; CLI: check_preprocessing=false) if it was trained otherwise"
        )
