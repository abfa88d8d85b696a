"""What the post-hoc networks (post-hoc PPN, KMEx) share: a frozen black box with class-major
prototypes (C, k, D) in its feature space, and how their artifacts keep and restore that black box."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from proto_lightning.atomic import atomic_torch_save
from proto_lightning.models.adapters import probe_fingerprint
from proto_lightning.models.blackbox_net import BlackBoxNet
from proto_lightning.models.files import plain_data
from proto_lightning.prototypes.projection import Projection

# a model given at load time is the saved one when its probe features agree to this (relative)
FINGERPRINT_TOLERANCE = 1e-4


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
            "blackbox": blackbox_entry(self.blackbox, self.probe_size()),
            "metadata": plain_data(dict(metadata or {})),
        }
        return atomic_torch_save(path, state)

    def probe_size(self) -> tuple[int, int] | None:
        """The input size the artifact records (`extras["image_size"]`), the probe's; None if unknown."""
        size = getattr(self, "extras", {}).get("image_size")
        return None if size is None else (int(size), int(size))

    @property
    def num_classes(self) -> int:
        """C."""
        return self.prototypes.shape[0]

    @property
    def prototypes_per_class(self) -> int:
        """k."""
        return self.prototypes.shape[1]


def blackbox_entry(net: BlackBoxNet, probe_size: Sequence[int] | None = None) -> dict[str, Any]:
    """The black box as an artifact keeps it (tensors and plain values).

    A black box we rebuild by name keeps that name and its whole state dict; a user's own model
    (no name) keeps its head only, and needs the model itself to load. With `probe_size`, the
    body's probe fingerprint (`adapters.probe_fingerprint`) is kept too, to check a model given at
    load time against the one the artifact was made from.
    """
    entry: dict[str, Any] = {
        "backbone": net.backbone.name,
        "library": net.backbone.library,
        "kwargs": net.backbone.kwargs,
        "num_classes": net.head.out_features,
    }
    if net.backbone.name is None:
        entry["head"] = {k: v.detach().cpu() for k, v in net.head.state_dict().items()}
        entry["body"] = type(net.backbone.body).__name__
    else:
        entry["state_dict"] = {k: v.cpu() for k, v in net.state_dict().items()}
    if probe_size is not None:
        size = [int(s) for s in probe_size]
        entry["probe"] = {"size": size, "pooled": probe_fingerprint(net.backbone, size)}
    return entry


def _saved_head_weight(saved: Mapping[str, Any]) -> torch.Tensor:
    return saved["head"]["weight"] if "head" in saved else saved["state_dict"]["head.weight"]


def require_same_blackbox(
    saved: Mapping[str, Any], given: BlackBoxNet, path: str | Path, error: type[Exception]
) -> None:
    """Refuse `given` unless its head equals the saved one and its body the saved probe fingerprint."""
    mine, theirs = _saved_head_weight(saved), given.head.weight.detach().cpu()
    if mine.shape != theirs.shape:
        raise error(
            f"{path} was made from a head of shape {tuple(mine.shape)} (C, D); the given black box "
            f"has {tuple(theirs.shape)}: pass the black box it was made from"
        )
    if not torch.allclose(mine, theirs, atol=1e-6):
        raise error(f"{path} was made from another black box (its head weights differ)")
    probe = saved.get("probe")
    if probe is None:
        return
    found = probe_fingerprint(given.backbone, probe["size"])
    gap = float((found - probe["pooled"]).norm() / probe["pooled"].norm().clamp_min(1e-12))
    if gap > FINGERPRINT_TOLERANCE:
        raise error(
            f"{path} was made from another model: the given model's body gives other features on "
            f"the probe (relative difference {gap:.2g}); pass the model it was made from, with the "
            "same weights and in eval mode"
        )


def restore_blackbox(
    saved: Mapping[str, Any],
    given: BlackBoxNet | str | Path | None,
    path: str | Path,
    error: type[Exception],
    trust_file: bool = False,
) -> BlackBoxNet:
    """The artifact's black box (`blackbox_entry`), or `given` (a net or checkpoint path) after checking
    that it is the same one: the artifact `path` was made from its head (and body, by its probe)."""
    if given is None:
        if saved.get("backbone") is None:
            raise error(
                f"{path} was made from an in-memory model ({saved.get('body', 'a custom body')}), "
                "which only its owner can rebuild: load it with PostHocPPN.load(path, "
                "model=<that model>)"
            )
        own = BlackBoxNet(
            saved["backbone"],
            saved["num_classes"],
            library=saved.get("library"),
            kwargs=saved.get("kwargs"),
        )
        own.load_state_dict(saved["state_dict"])
        return own
    if not isinstance(given, BlackBoxNet):
        from proto_lightning.models.blackbox import BlackBoxClassifier  # Lightning: a CLI path

        given = BlackBoxClassifier.load_checkpoint(given, trust_file=trust_file).net
    require_same_blackbox(saved, given, path, error)
    return given


def restored_projection(state: Mapping[str, Any]) -> Projection | None:
    """The projection an artifact written by `write_artifact` keeps (None when it has none)."""
    return Projection.from_dict(state["projection"]) if state["projection"] is not None else None
