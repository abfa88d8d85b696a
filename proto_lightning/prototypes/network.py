"""What a part-prototype network answers, whichever it is (the post-hoc PPN, ProtoPNet).

Callbacks, galleries and the evaluation are typed against `PrototypeNetwork`, as the explainers are
against `explainers.base.Explainer`, so neither reaches into one network's own attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from proto_lightning.prototypes.projection import Projection


def term_caption(prototype: int, contribution: float) -> str:
    """How every figure and listing names a "this looks like that" term: `p2: +0.31 for` or
    `p0: -0.12 against` (a negative term lowers the class's logit: it counts against the class)."""
    side = "for" if contribution >= 0 else "against"
    return f"p{prototype}: {contribution:+.2f} {side}"


@dataclass
class PrototypeExplanation:
    """One image explained by one class's prototypes, ranked by contribution (largest first).

    A term with a negative contribution counts against the class: the image looks like that
    prototype, and that lowers the logit (`against`). Its heatmap still shows where it responds.
    """

    label: int  # the class explained (the prediction unless a target was given)
    logit: float
    prototype_index: torch.Tensor  # (k,) which of the class's prototypes, in rank order
    contributions: torch.Tensor  # (k,) each prototype's term of the class logit
    heatmaps: torch.Tensor  # (k, H, W) where on the feature map each prototype responds
    upsampled: torch.Tensor  # (k, H0, W0) the heatmaps at the input size
    nearest: list[dict[str, Any]]  # (k,) the training patch each prototype is shown as

    @property
    def against(self) -> torch.Tensor:
        """(k,) bool: which terms lower the class's logit (count against the class)."""
        return self.contributions < 0

    def terms(self) -> list[str]:
        """The ranked terms as text, e.g. `p2: +0.31 for` / `p0: -0.12 against` (`term_caption`)."""
        return [
            term_caption(int(i), float(c))
            for i, c in zip(self.prototype_index, self.contributions, strict=True)
        ]


@runtime_checkable
class PrototypeNetwork(Protocol):
    """C classes with k prototypes each, each shown as the training patch it was projected onto."""

    projection: Projection | None  # the last projection (push), None before one
    extras: dict[str, Any]  # per-prototype records kept with the projection (boxes, ...)

    @property
    def num_classes(self) -> int:
        """C."""
        ...

    @property
    def prototypes_per_class(self) -> int:
        """k."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        ...

    def nearest_patch(self, label: int, i: int) -> dict[str, Any]:
        """The training patch prototype i of class `label` is shown as (empty before projection)."""
        ...

    def explain(
        self, x: torch.Tensor, target: torch.Tensor | int | None = None
    ) -> list[PrototypeExplanation]:
        """Per image, the predicted (or target) class's prototypes' "this looks like that" terms."""
        ...


def nearest_patch(network: PrototypeNetwork, label: int, i: int) -> dict[str, Any]:
    """`PrototypeNetwork.nearest_patch` for a network keeping class-major prototypes (c * k + i)."""
    if network.projection is None:
        return {}
    return network.projection.record(label * network.prototypes_per_class + i, network.extras)


def ranked_explanations(
    network: PrototypeNetwork,
    labels: torch.Tensor,
    logits: torch.Tensor,
    contributions: torch.Tensor,
    heatmaps: torch.Tensor,
    upsampled: torch.Tensor,
) -> list[PrototypeExplanation]:
    """Per image b, class labels[b]'s k terms ranked by contribution: labels (B,), logits (B, C),
    contributions (B, k), heatmaps (B, k, H, W), upsampled (B, k, H0, W0)."""
    explanations = []
    for b, label in enumerate(labels.tolist()):
        order = contributions[b].argsort(descending=True)  # (k,)
        explanations.append(
            PrototypeExplanation(
                label=label,
                logit=float(logits[b, label]),
                prototype_index=order.cpu(),
                contributions=contributions[b, order].cpu(),
                heatmaps=heatmaps[b, order].cpu(),
                upsampled=upsampled[b, order].cpu(),
                nearest=[network.nearest_patch(label, int(i)) for i in order],
            )
        )
    return explanations
