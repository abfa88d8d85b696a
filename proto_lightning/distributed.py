"""Process groups for the work a stage does outside a Trainer loop (feature collection, projection,
evaluation), on Lightning Fabric with the stage's own trainer settings.

`launch` starts (or joins) the same processes the Trainer would: under `trainer=ddp_cpu` it re-runs
the command for rank 1 and joins a gloo group; under `trainer=ddp` / torchrun / srun, NCCL. A later
`Trainer` in the same stage finds the group up and does not launch again. With one device it is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from lightning.fabric.strategies import DDPStrategy

from proto_lightning.errors import ProtoLightningError, RankFailedError

T = TypeVar("T")


def _fabric_strategy(strategy: Any) -> Any:
    """The trainer config's strategy (a name, or a DDPStrategy config) as Fabric's."""
    if isinstance(strategy, Mapping):
        return DDPStrategy(process_group_backend=strategy.get("process_group_backend"))
    return strategy or "auto"


def launch(trainer_cfg: Mapping[str, Any]) -> Fabric:
    """A launched Fabric with the trainer config's accelerator, devices, nodes and strategy."""
    fabric = Fabric(
        accelerator=trainer_cfg.get("accelerator", "auto"),
        devices=trainer_cfg.get("devices", "auto"),
        num_nodes=trainer_cfg.get("num_nodes", 1),
        strategy=_fabric_strategy(trainer_cfg.get("strategy")),
    )
    fabric.launch()
    return fabric


def contiguous_share(n: int, rank: int, world: int) -> np.ndarray:
    """Rank's share of items 0..n-1: contiguous blocks in rank order, so gathering keeps item order."""
    return np.array_split(np.arange(n), world)[rank]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes in the group ((0, 1) without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order ([obj] without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def fail_together(work: Callable[[], T]) -> T:
    """Run this rank's `work`; when any rank's raised a user mistake (`ProtoLightningError`), every
    rank raises: the failing rank its own error, the others `RankFailedError` with its message, so
    no rank waits on a collective the failed one never reaches. Every rank must call this the same
    number of times."""
    failure: ProtoLightningError | None = None
    result = None
    try:
        result = work()
    except ProtoLightningError as err:
        failure = err
    messages = gather_objects(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    for rank, message in enumerate(messages):
        if message is not None:
            raise RankFailedError(f"rank {rank} stopped: {message}")
    return result


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _joined(pieces: list) -> np.ndarray | torch.Tensor:
    """Every rank's per-image values, concatenated in rank order (= image order)."""
    if isinstance(pieces[0], torch.Tensor):
        return torch.cat(pieces)
    return np.concatenate(pieces)


def gather_images(local: object) -> object:
    """Join a per-image result (array, tensor, or a tuple / dataclass of them) across ranks; a rank
    whose share of the images is empty passes None (every rank must call this the same times)."""
    pieces = [p for p in gather_objects(local) if p is not None]
    first = pieces[0]  # rank 0 always has a share
    if len(pieces) == 1:
        return first
    if isinstance(first, tuple):
        return tuple(_joined([p[i] for p in pieces]) for i in range(len(first)))
    if is_dataclass(first):
        return type(first)(
            **{f.name: _joined([getattr(p, f.name) for p in pieces]) for f in fields(first)}
        )
    return _joined(pieces)
