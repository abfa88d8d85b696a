"""timm models as black-box bodies: a spatial feature map whose mean is exactly what the head reads.

The post-hoc network needs logits = V . mean_hw(f) + b (docs/method.md, "The network"). A timm model qualifies when
its classifier is linear on the spatial average of a map, possibly after a LayerNorm of that average:
  - CNNs (ResNet, EfficientNet, RegNet ...): `forward_features` is the map, the head pools it;
  - ConvNeXt: the head is pool -> LayerNorm -> linear; ViTs built with `global_pool='avg'`: the mean
    of the patch tokens (prefix tokens left out) -> `fc_norm` (a LayerNorm) -> linear.
A LayerNorm of the pooled vector z = mean_j f_j is affine in f_j once the image's statistics of z are
fixed: LN(z) = w * (z - mu(z)) / sigma(z) + b = mean_j [w * (f_j - mu(z)) / sigma(z) + b]. The
adapter returns that normalised map g_j, so mean_j g_j is exactly the vector the linear head reads
and every location keeps its own feature vector (one affine map per image). Anything else in the
head (a class token, attention pooling, max pooling, an MLP) is refused with the reason: the
logits are then not a sum over locations, and no decomposition can be exact.

Every adapter is checked on a probe image at build time: the mean of its map must equal timm's own
pre-logits (`forward_head(..., pre_logits=True)`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proto_lightning.errors import ConfigValueError, IncompatibleWeightsError
from proto_lightning.models.files import load_state_dict_file, plain_data

log = logging.getLogger(__name__)

WEIGHT_FILE_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}
TOKEN_POOLS_REFUSED = {
    "token": "it classifies the class token, not a mean over patch tokens",
    "map": "it pools the patch tokens by attention, with weights that depend on the image",
    "max": "it max-pools the tokens, which is not a sum over locations",
    "avgmax": "it adds a max over the tokens, which is not a sum over locations",
    "": "it has no pooling: its head does not read a mean over locations",
}
PROBE_TOLERANCE = 1e-4  # relative, float32


class NotDecomposableError(IncompatibleWeightsError):
    """A model whose head is not linear on a spatial mean: a post-hoc decomposition cannot be exact."""


class TimmFeatureMap(nn.Module):
    """A timm classifier's body: images (B, 3, H0, W0) -> map g (B, D, H, W), mean_hw g = pre-logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tokens = hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")
        self.norm = post_pool_norm(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the map the head averages, normalised per image as its LayerNorm does."""
        f = self.model.forward_features(x)
        if self.tokens:  # (B, N, D) with prefix tokens first -> (B, D, H, W) on the patch grid
            H, W = self.model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
            f = f[:, self.model.num_prefix_tokens :].transpose(1, 2).reshape(len(f), -1, H, W)
        return f if self.norm is None else fold_pooled_layernorm(f, self.norm)


def fold_pooled_layernorm(f: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """The map g (B, D, H, W) whose spatial mean is LayerNorm(mean_hw f): the fold of the module docstring.

    With z = mean_hw f (B, D), LN(z) = w (z - mu(z)) / sigma(z) + b = mean_hw [w (f - mu(z)) / sigma(z) + b].
    """
    z = f.mean(dim=(2, 3))  # (B, D), the pooled vector the LayerNorm sees
    mu = z.mean(dim=1).view(-1, 1, 1, 1)
    sigma = (z.var(dim=1, unbiased=False) + norm.eps).sqrt().view(-1, 1, 1, 1)
    g = (f - mu) / sigma
    if norm.weight is not None:
        g = g * norm.weight.view(1, -1, 1, 1)
    if norm.bias is not None:
        g = g + norm.bias.view(1, -1, 1, 1)
    return g


def post_pool_norm(model: nn.Module) -> nn.LayerNorm | None:
    """The LayerNorm a timm head applies to the pooled vector (ViT `fc_norm`, ConvNeXt `head.norm`)."""
    for owner, attribute in ((model, "fc_norm"), (getattr(model, "head", None), "norm")):
        norm = getattr(owner, attribute, None) if isinstance(owner, nn.Module) else None
        if isinstance(norm, nn.LayerNorm):
            return norm
        if norm is not None and not isinstance(norm, nn.Identity):
            raise NotDecomposableError(
                f"{type(model).__name__}'s head applies {type(norm).__name__} after pooling; only a "
                "LayerNorm (or none) keeps the logits a sum over locations"
            )
    return None


def refuse_token_heads(model: nn.Module, name: str) -> None:
    """Refuse a transformer whose head does not average its patch tokens, saying why."""
    pool = getattr(model, "global_pool", None)
    if hasattr(model, "patch_embed") and isinstance(pool, str) and pool != "avg":
        reason = TOKEN_POOLS_REFUSED.get(pool, f"its pooling is {pool!r}")
        raise NotDecomposableError(
            f"timm model {name!r} cannot be decomposed exactly: {reason}, so its logits are not "
            "V . mean_hw(f) + b. Create it with average-pooled patch tokens "
            "(global_pool: avg, in blackbox_kwargs for `decompose blackbox=`, in "
            "model.backbone.kwargs for a backbone you train) and train or fine-tune that head."
        )


def create_timm_model(
    name: str, num_classes: int = 0, weights: str | None = None, kwargs: dict | None = None
) -> nn.Module:
    """`timm.create_model` with no weights, a local file (classifier left out) or a pretrained tag.

    `weights`: None (random init); a file (.pt/.pth/.bin state dict, or .safetensors) of the body,
    read as data; `pretrained` for timm's default tag, or a tag such as `in1k` (downloaded once to
    the Hugging Face cache: needs a network).
    """
    import timm  # imported here: timm is only needed by runs that name a timm model

    if not timm.is_model(name):
        raise ConfigValueError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    kwargs = dict(kwargs or {})
    local = weights is not None and Path(str(weights)).suffix in WEIGHT_FILE_SUFFIXES
    if weights is None or local:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    else:
        tagged = name if weights == "pretrained" else f"{name}.{weights}"
        model = timm.create_model(tagged, pretrained=True, num_classes=num_classes, **kwargs)
    if local:
        classifier = model.pretrained_cfg.get("classifier", "head")
        load_state_dict_file(model, Path(weights), ignore_prefixes=(f"{classifier}.",))
    return model


def probe_size(model: nn.Module) -> tuple[int, int]:
    """An input size the model accepts: a ViT's fixed image size, else a small 64 x 64 image."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None) is not None:
        return tuple(patch_embed.img_size)
    return (64, 64)


@torch.no_grad()
def check_mean_is_pre_logits(body: TimmFeatureMap, name: str) -> int:
    """The map's mean equals timm's pre-logits on a probe image (else refused); returns D."""
    model = body.model
    was_training = model.training
    model.eval()
    x = torch.randn(1, 3, *probe_size(model), generator=torch.Generator().manual_seed(0))
    pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)  # (1, D)
    mean = body(x).mean(dim=(2, 3))
    model.train(was_training)
    gap = float((mean - pre_logits).norm() / pre_logits.norm().clamp_min(1e-12))
    if mean.shape != pre_logits.shape or gap > PROBE_TOLERANCE:
        raise NotDecomposableError(
            f"timm model {name!r}: the mean of its feature map is not what its classifier reads "
            f"(relative gap {gap:.2g}); its head is not linear on a spatial mean, so a post-hoc "
            "decomposition cannot reproduce its logits"
        )
    return int(mean.shape[1])


def timm_body(model: nn.Module, name: str) -> tuple[TimmFeatureMap, int]:
    """The checked feature-map body of a timm classifier and its channel count D."""
    refuse_token_heads(model, name)
    body = TimmFeatureMap(model)
    return body, check_mean_is_pre_logits(body, name)


def timm_classifier(model: nn.Module, name: str) -> nn.Linear:
    """A timm model's linear classifier (its V, b)."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise NotDecomposableError(
            f"timm model {name!r} has a {type(head).__name__} classifier, not a linear layer"
        )
    return head


def timm_model_kwargs(options: Any) -> dict:
    """`model.backbone.kwargs` (timm.create_model's keyword arguments) as plain containers."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"model.backbone.kwargs must be a mapping, got {type(options).__name__}")
    return plain_data(options)
