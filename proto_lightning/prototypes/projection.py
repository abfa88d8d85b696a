"""Nearest training patch of each query vector (prototype), shared by the post-hoc PPN and ProtoPNet's push.

docs/method.md, "Projection". Patches are added batch by batch (streaming) into exact FAISS flat indexes, one
per class, so a search can be restricted to the query's class and memory is bounded by the indexes
themselves. An unrestricted search, a search over several classes and a search over several DDP
shards all reduce the same way: `merge_nearest` keeps, per query, the candidate of smallest distance.

Metrics: `l2` (squared Euclidean distance, ProtoPNet's push) and `ip` (inner product; reported as
distance = -f.p so that smaller is always better). The post-hoc network's heatmap of prototype i is
f_j . p~_i, so the patch that shows "what the prototype looks for" is the one of largest inner
product: its visualisation uses `ip`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from proto_lightning.errors import ConfigValueError
from proto_lightning.settings import require_choice

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)


@functools.cache
def load_faiss():  # noqa: ANN201 (the faiss module)
    """FAISS, imported on first use: a `Projection` (what a saved network keeps) needs none of it.

    FAISS logs its CPU-feature probing (a caught ModuleNotFoundError among it) at INFO when
    imported: noise in every command's output, so its loader speaks from WARNING on.
    """
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


METRICS = ("l2", "ip")
DEVICES = ("auto", "cpu", "cuda")
# boxes a network may keep per prototype (extras "<name>es", (Q, 4) arrays in input pixels)
BOX_NAMES = ("rf_box", "high_activation_box")


@dataclass(frozen=True)
class ProjectionSettings:
    """Nearest-patch projection of the post-hoc prototypes (`model.projection`): metric (ip | l2),
    restricted to the prototype's class or not, FAISS device (auto | cpu | cuda), and the
    percentile of the high-activation box."""

    metric: str = "ip"
    class_restricted: bool = True
    device: str = "auto"
    high_activation_percentile: float = 95.0

    def __post_init__(self) -> None:
        require_choice(self.metric, METRICS, "model.projection.metric")
        require_choice(self.device, DEVICES, "model.projection.device")
        if not 0 <= self.high_activation_percentile <= 100:
            raise ConfigValueError(
                "model.projection.high_activation_percentile must be within 0..100, got "
                f"{self.high_activation_percentile}"
            )


@dataclass
class Projection:
    """Per query: the winning patch's dataset row, image id, feature location (h, w), distance, class."""

    rows: np.ndarray  # (Q,) int64, row in the dataset index; -1 when nothing was searched
    image_ids: np.ndarray  # (Q,) int64
    locations: np.ndarray  # (Q, 2) int64, (h, w) on the feature map
    distances: np.ndarray  # (Q,) float32; squared L2, or -inner product
    labels: np.ndarray  # (Q,) int64, class of the winning patch
    vectors: np.ndarray | None = None  # (Q, D) float32, the winning patch vectors (exact copies)

    @classmethod
    def empty(cls, n: int) -> Projection:
        """A projection of `n` queries that found nothing yet (distance +inf)."""
        return cls(
            rows=np.full(n, -1, dtype=np.int64),
            image_ids=np.full(n, -1, dtype=np.int64),
            locations=np.full((n, 2), -1, dtype=np.int64),
            distances=np.full(n, np.inf, dtype=np.float32),
            labels=np.full(n, -1, dtype=np.int64),
        )

    def take(self, other: Projection, mask: np.ndarray) -> None:
        """Replace the entries selected by `mask` with those of `other` (same query order)."""
        for name in ("rows", "image_ids", "locations", "distances", "labels"):
            getattr(self, name)[mask] = getattr(other, name)[mask]
        if other.vectors is not None:
            if self.vectors is None:
                self.vectors = np.zeros_like(other.vectors)
            self.vectors[mask] = other.vectors[mask]

    def place(self, other: Projection, queries: np.ndarray) -> None:
        """Write `other` (answers to a subset of the queries, in order) into positions `queries`."""
        for name in ("rows", "image_ids", "locations", "distances", "labels"):
            getattr(self, name)[queries] = getattr(other, name)
        if other.vectors is not None:
            if self.vectors is None:
                self.vectors = np.zeros((len(self.rows), other.vectors.shape[1]), dtype=np.float32)
            self.vectors[queries] = other.vectors

    def record(self, q: int, extras: Mapping[str, Any]) -> dict[str, Any]:
        """Query q's winner as plain values: row, image id, location, distance, each box of
        BOX_NAMES that `extras` keeps (under "<name>es", a (Q, 4) array), and its image file
        (`path`) when `extras["nearest_paths"]` names one."""
        boxes = {name: extras[f"{name}es"][q] for name in BOX_NAMES if f"{name}es" in extras}
        record = {
            "row": int(self.rows[q]),
            "image_id": int(self.image_ids[q]),
            "location": tuple(int(v) for v in self.locations[q]),
            "distance": float(self.distances[q]),
            **{name: tuple(int(v) for v in box) for name, box in boxes.items()},
        }
        if extras.get("nearest_paths") and extras["nearest_paths"][q]:
            record["path"] = extras["nearest_paths"][q]  # the image file, when the data named one
        return record

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Tensors for an artifact file."""
        return {
            k: torch.from_numpy(np.ascontiguousarray(v))
            for k, v in vars(self).items()
            if v is not None
        }

    @classmethod
    def from_dict(cls, state: dict[str, torch.Tensor]) -> Projection:
        """Inverse of `to_dict`."""
        return cls(**{k: v.numpy() for k, v in state.items()})


def merge_nearest(candidates: list[Projection]) -> Projection:
    """Per query, the candidate of smallest distance (first one on ties): the shard/class min-reduce."""
    merged = Projection.empty(len(candidates[0].distances))
    for candidate in candidates:
        merged.take(candidate, candidate.distances < merged.distances)
    return merged


def _use_gpu(device: str) -> bool:
    require_choice(device, DEVICES, "model.projection.device")
    gpus = load_faiss().get_num_gpus()  # 0 in a CPU-only build
    if device == "cuda" and gpus == 0:
        log.warning("projection.device=cuda but FAISS sees no GPU: using CPU indexes")
    return device != "cpu" and gpus > 0


def _this_process_gpu() -> int:
    """The GPU of this process: torch's current CUDA device (Lightning sets it to the rank's local
    device), else LOCAL_RANK, else 0."""
    if torch.cuda.is_available():
        return torch.cuda.current_device()
    return int(os.environ.get("LOCAL_RANK", 0))


@functools.cache
def gpu_resources(gpu: int) -> faiss.StandardGpuResources:
    """One FAISS resources object per GPU per process (each reserves ~1.5 GiB of scratch memory and
    pinned host memory), shared by every index this process places on that GPU."""
    return load_faiss().StandardGpuResources()


class NearestPatchIndex:
    """Streaming exact nearest-patch search with optional class restriction (FAISS flat indexes)."""

    def __init__(
        self,
        dim: int,
        metric: str = "l2",
        device: str = "auto",
        flush_rows: int = 262144,
        gpu: int | None = None,
    ) -> None:
        """`device` auto/cuda place the indexes on GPU `gpu` (default: this process's, i.e. the
        DDP rank's own) when FAISS sees one; cpu keeps them in host memory."""
        require_choice(metric, METRICS, "model.projection.metric")
        self.dim, self.metric = dim, metric
        self.gpu = _use_gpu(device)
        self._gpu_id = (gpu if gpu is not None else _this_process_gpu()) if self.gpu else None
        self._indexes: dict[int, faiss.Index] = {}
        self._meta: dict[int, list[np.ndarray]] = {}  # class -> chunks of (row, image_id, h, w)
        # FAISS reallocates a flat index on every add: small chunks wait here (at most `flush_rows`
        # rows in all) and go in with one add per class.
        self._pending: dict[int, list[np.ndarray]] = {}
        self._pending_rows = 0
        self.flush_rows = flush_rows

    def _index(self, label: int) -> faiss.Index:
        if label not in self._indexes:
            faiss = load_faiss()
            flat = (
                faiss.IndexFlatL2(self.dim) if self.metric == "l2" else faiss.IndexFlatIP(self.dim)
            )
            if self.gpu:
                flat = faiss.index_cpu_to_gpu(gpu_resources(self._gpu_id), self._gpu_id, flat)
            self._indexes[label] = flat
            self._meta[label] = []
        return self._indexes[label]

    @property
    def size(self) -> int:
        """Number of patches added."""
        return sum(index.ntotal for index in self._indexes.values()) + self._pending_rows

    def _flush(self) -> None:
        for label, chunks in self._pending.items():
            self._indexes[label].add(np.concatenate(chunks) if len(chunks) > 1 else chunks[0])
        self._pending, self._pending_rows = {}, 0

    def add(
        self,
        features: torch.Tensor | np.ndarray,
        labels: np.ndarray,
        rows: np.ndarray,
        image_ids: np.ndarray,
        locations: np.ndarray,
    ) -> None:
        """Add patch vectors (N, D) with their class, dataset row, image id and (h, w) location."""
        features = _as_float32(features)
        labels = np.asarray(labels)
        meta = np.column_stack([rows, image_ids, np.asarray(locations).reshape(-1, 2)]).astype(
            np.int64
        )
        if (
            np.diff(labels) < 0
        ).any():  # group by class with one gather (class-ordered input skips it)
            order = np.argsort(labels, kind="stable")
            features, labels, meta = features[order], labels[order], meta[order]
        cuts = np.flatnonzero(np.diff(labels)) + 1
        for start, end in zip(np.r_[0, cuts], np.r_[cuts, len(labels)], strict=True):
            label = int(labels[start])
            self._index(label)
            self._pending.setdefault(label, []).append(features[start:end])
            self._meta[label].append(meta[start:end])
        self._pending_rows += len(labels)
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        classes: np.ndarray | None = None,
        return_vectors: bool = False,
    ) -> Projection:
        """Nearest patch of each query (Q, D); with `classes` (Q,), only among patches of that class.

        With `return_vectors`, the winning patch vectors come back exactly as they were added.
        """
        queries = _as_float32(queries)
        self._flush()
        candidates = []
        for label, index in self._indexes.items():
            selected = (
                np.arange(len(queries)) if classes is None else np.flatnonzero(classes == label)
            )
            if len(selected) == 0:  # (an index exists only once a patch was added)
                continue
            scores, ids = index.search(queries[selected], 1)
            meta = (
                np.concatenate(self._meta[label])
                if len(self._meta[label]) > 1
                else self._meta[label][0]
            )
            self._meta[label] = [meta]  # concatenate once
            found = Projection.empty(len(queries))
            winners = meta[ids[:, 0]]
            found.rows[selected] = winners[:, 0]
            found.image_ids[selected] = winners[:, 1]
            found.locations[selected] = winners[:, 2:4]
            found.distances[selected] = scores[:, 0] if self.metric == "l2" else -scores[:, 0]
            found.labels[selected] = label
            if return_vectors:
                found.vectors = np.zeros((len(queries), self.dim), dtype=np.float32)
                found.vectors[selected] = index.reconstruct_batch(ids[:, 0].astype(np.int64))
            candidates.append(found)
        return merge_nearest(candidates) if candidates else Projection.empty(len(queries))


def all_reduce_nearest(local: Projection) -> Projection:
    """Under DDP, gather every rank's projection of its shard and min-reduce them; else return as is."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    gathered: list[Projection | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return merge_nearest([g for g in gathered if g is not None])


def _as_float32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)
