"""Reading the files models come from (checkpoints, artifacts, weight files) with errors that say what to do."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from proto_lightning.errors import IncompatibleWeightsError


def read_torch_file(
    path: str | Path,
    what: str,
    made_by: str | None = None,
    error: type[Exception] = IncompatibleWeightsError,
    weights_only: bool = False,
    map_location: str = "cpu",
) -> Any:
    """`torch.load` a file: a missing one names what makes it, a truncated or foreign one raises `error`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {path} does not exist" + (f"; {made_by}" if made_by else "")
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:
        raise error(f"cannot read {what} {path} (truncated or not a torch file): {err}") from err


def checkpoint_hyperparameters(
    checkpoint: Any, required: Iterable[str], path: str | Path, kind: str
) -> dict[str, Any]:
    """The Lightning checkpoint's hyper-parameters to rebuild its model, refusing a checkpoint of another kind.

    The backbone's pretrained weights are dropped (`weights: None`): the checkpoint holds the weights.
    """
    params = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not {"backbone", *required} <= params.keys():
        raise IncompatibleWeightsError(
            f"{path} is not a {kind} checkpoint (hyper-parameters: {sorted(params)})"
        )
    return {**params, "backbone": {**params["backbone"], "weights": None}}


def require_class_count(what: str, path: str | Path, found: int, expected: int, stage: str) -> None:
    """Refuse a model file that predicts another number of classes than the data has."""
    if found != expected:
        raise IncompatibleWeightsError(
            f"{what} {path} predicts {found} classes but the data has {expected}: it was made on "
            f"another dataset; {stage} it on the data it was trained on"
        )
