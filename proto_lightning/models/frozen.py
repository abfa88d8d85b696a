"""What the post-hoc networks (post-hoc PPN, KMEx) share: a frozen black box with class-major
prototypes (C, k, D) in its feature space, and how their artifacts keep and restore that black box."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from proto_lightning.atomic import atomic_torch_save
from proto_lightning.models.blackbox import BlackBoxClassifier, BlackBoxNet
from proto_lightning.models.files import plain_data
from proto_lightning.prototypes.projection import Projection


class FrozenPrototypes:
    """Mixin of an `nn.Module`: `blackbox` (frozen) and the buffer `prototypes` (C, k, D)."""

    def attach(
        self, blackbox: BlackBoxNet, prototypes: torch.Tensor, error: type[Exception]
    ) -> None:
        """Freeze `blackbox` and keep `prototypes`, refusing prototypes of another head's shape."""
        C, k, D = prototypes.shape
        if blackbox.head.weight.shape != (C, D):
            raise error(
                f"prototypes are for C={C} classes and D={D} features, but the black box head is "
                f"{tuple(blackbox.head.weight.shape)} (C, D): they were made from another black box"
            )
        self.blackbox = blackbox.eval().requires_grad_(False)
        self.register_buffer("prototypes", prototypes.float())

    def write_artifact(
        self, path: str | Path, format: str, metadata: Mapping[str, Any] | None, **own: Any
    ) -> Path:
        """Write the network's artifact atomically: its format, prototypes, projection, extras, black
        box and metadata, plus its `own` entries (tensors and plain values only)."""
        state = {
            "format": format,
            "prototypes": self.prototypes.cpu(),
            **own,
            "projection": self.projection.to_dict() if self.projection is not None else None,
            "extras": plain_data(self.extras),
            "blackbox": blackbox_entry(self.blackbox),
            "metadata": plain_data(dict(metadata or {})),
        }
        return atomic_torch_save(path, state)

    @property
    def num_classes(self) -> int:
        """C."""
        return self.prototypes.shape[0]

    @property
    def prototypes_per_class(self) -> int:
        """k."""
        return self.prototypes.shape[1]


def blackbox_entry(net: BlackBoxNet) -> dict[str, Any]:
    """The black box as an artifact keeps it (tensors and plain values): what rebuilds it, its weights."""
    return {
        "backbone": net.backbone.name,
        "library": net.backbone.library,
        "kwargs": net.backbone.kwargs,
        "num_classes": net.head.out_features,
        "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
    }


def restore_blackbox(
    saved: Mapping[str, Any],
    given: BlackBoxNet | str | Path | None,
    path: str | Path,
    error: type[Exception],
    trust_file: bool = False,
) -> BlackBoxNet:
    """The artifact's black box (`blackbox_entry`), or `given` (a net or checkpoint path) after checking
    that it is the same one: the artifact `path` was made from its head."""
    own = BlackBoxNet(
        saved["backbone"],
        saved["num_classes"],
        library=saved.get("library"),
        kwargs=saved.get("kwargs"),
    )
    own.load_state_dict(saved["state_dict"])
    if given is None:
        return own
    if not isinstance(given, BlackBoxNet):
        given = BlackBoxClassifier.load_checkpoint(given, trust_file=trust_file).net
    mine, theirs = own.head.weight, given.head.weight
    if mine.shape != theirs.shape:
        raise error(
            f"{path} was made from a head of shape {tuple(mine.shape)} (C, D); the given black box "
            f"has {tuple(theirs.shape)}: pass the black box it was made from"
        )
    if not torch.allclose(mine, theirs.detach().cpu(), atol=1e-6):
        raise error(f"{path} was made from another black box (its head weights differ)")
    return given


def restored_projection(state: Mapping[str, Any]) -> Projection | None:
    """The projection an artifact written by `write_artifact` keeps (None when it has none)."""
    return Projection.from_dict(state["projection"]) if state["projection"] is not None else None
