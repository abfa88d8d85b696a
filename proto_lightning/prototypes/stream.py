"""The streaming decomposition: class batch after class batch, resident on the device, no store.

Each class batch (`features.ClassBatch`: the push images of a few consecutive classes, read once) stays
on the device for discovery and least squares (`decomposition.factorise_batch`), for the heatmaps that
refinement and projection need (`decomposition.class_maps`), for KMEx's pooled vectors and, when the
projection is not restricted to the prototype's class, for the FAISS index; then its features are
released. Refinement (Nelder-Mead on the CPU, O(n k^3) per evaluation) and the class-restricted
projection (an exact arg-max over the class's own patches, from those heatmaps) of one batch run in a
worker thread while the device reads and factorises the next, so the device never waits on them for
more than the last batch.

Batches follow device memory: consecutive classes, at most `classes_per_batch`, `max_batch_gb` of padded
features and 2^31 elements per batch (`plan_class_batches`); free memory is checked before any image is
read (`require_memory`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from proto_lightning.errors import ConfigValueError, ResourceError
from proto_lightning.prototypes.decomposition import (
    FactorisedBatch,
    HeadDecomposition,
    NMFSettings,
    RefinementSettings,
    factorise_batch,
    prototype_heatmaps,
    refine_batch,
)
from proto_lightning.prototypes.features import ClassBatch, collect_class_batch, collect_features
from proto_lightning.prototypes.kmeans import KMeansSettings, centres_of, image_embeddings
from proto_lightning.prototypes.projection import NearestPatchIndex, Projection, ProjectionSettings

log = logging.getLogger(__name__)

GIB = 2**30
MAX_ELEMENTS = 2**31 - 1  # a batch stays within 32-bit element indexing in every kernel
# a batch's peak on the device, in units of its features: F itself, the factorisation's (N, k)
# factors and products, one float64 chunk of `class_maps`, the caching allocator's slack
PEAK_FACTOR = 1.5


@dataclass(frozen=True)
class BatchSettings:
    """Class batches (`model.feature_store`): the most padded features one batch may hold on the
    device, and the memory and disk left free for everything else."""

    max_batch_gb: float = 4.0
    reserve_gb: float = 1.0

    def __post_init__(self) -> None:
        if self.max_batch_gb <= 0:
            raise ConfigValueError(
                f"model.feature_store.max_batch_gb must be > 0, got {self.max_batch_gb}"
            )
        if self.reserve_gb < 0:
            raise ConfigValueError(
                f"model.feature_store.reserve_gb must be >= 0, got {self.reserve_gb}"
            )


def plan_class_batches(
    image_counts: np.ndarray,
    image_elements: int,
    classes_per_batch: int,
    max_batch_bytes: float,
) -> list[list[int]]:
    """Consecutive classes in batches of at most `classes_per_batch`, whose padded features
    (C_b x max n_c images x `image_elements` = H W D float32) take at most `max_batch_bytes` and
    2^31 elements. With no byte limit reached the batches are blocks of `classes_per_batch`.

    Raises:
        ResourceError: one class alone exceeds the limit (it names the class and both sizes).
    """
    limit = min(max_batch_bytes / 4, MAX_ELEMENTS)  # float32 elements
    empty = np.flatnonzero(np.asarray(image_counts) == 0).tolist()
    if empty:
        raise ConfigValueError(
            f"class(es) {empty} have no training images, so no features to decompose and no "
            "patch to show: every class of the head needs some"
        )
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for c, n in enumerate(np.asarray(image_counts).tolist()):
        if n * image_elements > limit:
            raise ResourceError(
                f"class {c}'s features take {n * image_elements * 4 / GIB:.2f} GiB ({n} images), "
                f"more than one batch may hold ({limit * 4 / GIB:.2f} GiB: "
                "model.feature_store.max_batch_gb, at most 2^31 elements): raise max_batch_gb if "
                "the device has the memory, or run with model.feature_store.spill_dir=<folder>"
            )
        grown = max(widest, n)
        if current and (
            len(current) == classes_per_batch or (len(current) + 1) * grown * image_elements > limit
        ):
            batches.append(current)
            current, grown = [], n
        current.append(c)
        widest = grown
    return [*batches, current] if current else batches


@torch.inference_mode()
def feature_elements(
    features_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, device
) -> int:
    """H W D of one image's feature map (a probe forward pass of `image` (3, S, S))."""
    return features_fn(image[None].to(device))[0].numel()


def largest_batch_bytes(
    plan: Sequence[Sequence[int]], image_counts: np.ndarray, image_elements: int
) -> int:
    """Bytes of the largest padded batch of `plan` (float32), 0 for an empty plan."""
    sizes = [len(b) * int(np.max(image_counts[list(b)])) * image_elements * 4 for b in plan]
    return max(sizes, default=0)


@dataclass
class BatchPlan:
    """The head's class batches and one process's contiguous share of them (whole batches, so the
    results gathered in rank order are those of one process)."""

    batches: list[list[int]]
    mine: list[list[int]]
    image_counts: np.ndarray  # (C,) images per class
    image_elements: int  # H W D

    @classmethod
    def of(
        cls,
        labels: np.ndarray,
        num_classes: int,
        image_elements: int,
        classes_per_batch: int,
        settings: BatchSettings,
        rank: int = 0,
        world: int = 1,
    ) -> BatchPlan:
        """`plan_class_batches` from the dataset's labels; `rank`'s share of `world`."""
        counts = np.bincount(labels, minlength=num_classes)
        batches = plan_class_batches(
            counts, image_elements, classes_per_batch, settings.max_batch_gb * GIB
        )
        share = np.array_split(np.arange(len(batches)), world)[rank]
        return cls(batches, [batches[b] for b in share], counts, image_elements)

    @property
    def classes(self) -> list[int]:
        """This process's classes, in order."""
        return [c for batch in self.mine for c in batch]

    def check(self, device, settings: BatchSettings, spill: Path | None = None) -> None:
        """Refuse before any image is read: a batch the device's free memory cannot hold, or a
        spilled store the disk cannot (`require_memory`, `require_disk`)."""
        if spill is not None:
            store_bytes = int(self.image_counts[self.classes].sum()) * self.image_elements * 4
            require_disk(spill, store_bytes, settings.reserve_gb)
        require_memory(
            largest_batch_bytes(self.mine, self.image_counts, self.image_elements),
            device,
            settings.reserve_gb,
        )


def planned_batches(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader_of: Callable[[Sequence[int]], Iterable[dict[str, torch.Tensor]]],
    labels: np.ndarray,
    plan: BatchPlan,
    device: torch.device | str,
    spill: Path | None = None,
) -> Iterator[ClassBatch]:
    """The plan's own batches: read from the images one batch at a time, or, with a `spill`
    folder, from a memory-mapped store of all its classes' features written there first."""
    if spill is None:
        return stream_class_batches(features_fn, loader_of, labels, plan.mine, device)
    store = collect_features(
        features_fn,
        loader_of(plan.classes),
        labels[np.isin(labels, plan.classes)],
        len(plan.image_counts),
        0.0,
        spill,
        device,
    )
    return (ClassBatch.of_store(store, classes, device) for classes in plan.mine)


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory of a CUDA device, or the host's available memory (Linux /proc/meminfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 2**62  # no figure to check against


def require_memory(batch_bytes: int, device: torch.device | str, reserve_gb: float) -> None:
    """Refuse a class batch whose peak (`PEAK_FACTOR` x its features) would not leave `reserve_gb`
    free on `device`, before any image is read (nothing to check for no batch)."""
    if batch_bytes == 0:
        return
    need = PEAK_FACTOR * batch_bytes + reserve_gb * GIB
    free = free_memory_bytes(device)
    if need > free:
        raise ResourceError(
            f"a class batch needs {need / GIB:.2f} GiB on {device} (features "
            f"{batch_bytes / GIB:.2f} GiB, peak x{PEAK_FACTOR}, {reserve_gb} GiB kept free), "
            f"{free / GIB:.2f} GiB is free: lower model.feature_store.max_batch_gb or "
            "model.nmf.classes_per_batch"
        )


def require_disk(folder: Path, nbytes: int, reserve_gb: float) -> None:
    """Refuse to write `nbytes` into `folder` when that would leave less than `reserve_gb` free
    there (a full disk under a memory map ends a process with SIGBUS and no message; nothing to
    check when nothing is written)."""
    if nbytes == 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if nbytes + reserve_gb * GIB > free:
        raise ResourceError(
            f"the feature store needs {nbytes / GIB:.2f} GiB in {folder} and {reserve_gb} GiB kept "
            f"free, but {free / GIB:.2f} GiB is free there: free space, or point "
            "model.feature_store.spill_dir elsewhere"
        )


def stream_class_batches(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader_of: Callable[[Sequence[int]], Iterable[dict[str, torch.Tensor]]],
    labels: np.ndarray,
    plan: Sequence[Sequence[int]],
    device: torch.device | str,
) -> Iterator[ClassBatch]:
    """Each planned batch read when it is asked for: `loader_of(classes)` yields exactly those
    classes' images, in the order of `labels` (the dataset's labels) restricted to them."""
    for classes in plan:
        yield collect_class_batch(
            features_fn,
            loader_of(classes),
            labels[np.isin(labels, classes)],
            classes,
            int(labels.max()) + 1,
            device,
        )


@dataclass(frozen=True)
class StreamSteps:
    """What the streaming decomposition does to each batch, and with which settings."""

    prototypes_per_class: int
    nmf: NMFSettings = NMFSettings()
    refinement: RefinementSettings = RefinementSettings()
    projection: ProjectionSettings = ProjectionSettings()
    kmeans: KMeansSettings | None = None  # KMEx beside the post-hoc network
    seed: int = 0


@dataclass
class StreamResult:
    """One process's share: its classes' decomposition, their prototypes' nearest patches (other
    classes' queries left empty), KMEx's centres and nearest images, and where the time went."""

    decomposition: HeadDecomposition | None  # this process's classes, in order
    projection: Projection  # (C k,) queries
    kmex_centres: torch.Tensor | None  # (C_share, k, D)
    kmex_projection: Projection | None  # (C k,) queries
    map_size: tuple[int, int] | None
    index: NearestPatchIndex | None  # every patch, for an unrestricted projection
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Finished:
    decomposition: HeadDecomposition
    nearest: Projection  # (C_b k,) queries
    kmex_centres: torch.Tensor | None
    kmex_nearest: Projection | None
    seconds: float


def _provenance(batch: ClassBatch, i: int, winners: np.ndarray, images: bool) -> Projection:
    """A projection of class i's queries onto its patches `winners` (patch indices, or image
    indices with `images`), with their rows, ids and locations."""
    hw = batch.map_size[0] * batch.map_size[1]
    index = winners * hw if images else winners
    found = Projection.empty(len(winners))
    found.rows = batch.rows[i, index].copy()
    found.image_ids = batch.image_ids[i, index].copy()
    found.locations = np.zeros((len(winners), 2), np.int64) if images else batch.locations[i, index]
    found.labels = np.full(len(winners), batch.classes[i], dtype=np.int64)
    return found


def _finish(
    factorised: FactorisedBatch,
    batch: ClassBatch,
    embeddings: list[np.ndarray] | None,
    steps: StreamSteps,
) -> _Finished:
    """The CPU half of a batch (the worker's): refinement, the class-restricted projection from the
    heatmaps, KMEx's k-means and nearest images."""
    start = time.perf_counter()
    part = refine_batch(factorised, steps.refinement)
    k = steps.prototypes_per_class
    nearest = Projection.empty(len(batch.classes) * k)
    kk = steps.kmeans.prototypes_per_class if steps.kmeans is not None else 0
    kmex_nearest = Projection.empty(len(batch.classes) * kk) if embeddings is not None else None
    centres = []
    for i, c in enumerate(batch.classes):
        queries = np.arange(i * k, (i + 1) * k)
        if steps.projection.class_restricted:
            scores = prototype_heatmaps(
                factorised.maps[i],
                factorised.P[i],
                factorised.residual[i],
                factorised.alpha[i],
                part.beta[i].double(),
                part.shift[i].double(),
            )  # (N, k) f_j . p~_i
            distances = -scores
            if steps.projection.metric == "l2":
                p_sq = part.prototypes[i].double().pow(2).sum(1)  # (k,)
                distances = factorised.maps[i].sq[:, None] - 2 * scores + p_sq
            best = distances.argmin(0).numpy()  # (k,) first of equals
            found = _provenance(batch, i, best, images=False)
            found.distances = distances[best, np.arange(k)].float().numpy()
            nearest.place(found, queries)
        if embeddings is not None:
            X = embeddings[i]  # (n_c, D) float64
            centre = centres_of(X, c, steps.kmeans, steps.seed)  # (k, D)
            squared = ((X[:, None, :] - centre.double().numpy()[None]) ** 2).sum(-1)  # (n_c, k)
            best = squared.argmin(0)
            found = _provenance(batch, i, best, images=True)
            found.distances = squared[best, np.arange(kk)].astype(np.float32)
            kmex_nearest.place(found, np.arange(i * kk, (i + 1) * kk))
            centres.append(centre)
    kmex_centres = torch.stack(centres) if centres else None
    return _Finished(part, nearest, kmex_centres, kmex_nearest, time.perf_counter() - start)


def _device_step(
    batch: ClassBatch, V: torch.Tensor, steps: StreamSteps, index: NearestPatchIndex | None
) -> tuple[FactorisedBatch, list[np.ndarray] | None, NearestPatchIndex | None]:
    """What needs the batch's features, while they are resident: factorisation and heatmaps,
    KMEx's pooled vectors, the unrestricted projection's index; then they are released."""
    hw = batch.map_size[0] * batch.map_size[1]
    factorised = factorise_batch(
        batch.F,
        batch.counts,
        V[batch.classes],
        batch.classes,
        steps.prototypes_per_class,
        hw,
        steps.nmf,
        steps.seed,
    )
    embeddings = image_embeddings(batch) if steps.kmeans is not None else None
    if not steps.projection.class_restricted:
        if index is None:
            index = NearestPatchIndex(
                batch.F.shape[-1], steps.projection.metric, steps.projection.device
            )
        for i, n in enumerate(batch.counts):
            index.add(
                batch.F[i, :n],
                np.full(n, batch.classes[i]),
                batch.rows[i, :n],
                batch.image_ids[i, :n],
                batch.locations[i, :n],
            )
    batch.F = batch.F.new_zeros(0)  # release the features; the worker needs none of them
    return factorised, embeddings, index


def decompose_stream(
    batches: Iterable[ClassBatch],
    V: torch.Tensor,
    steps: StreamSteps,
    overlap: bool = True,
) -> StreamResult:
    """Decompose the head V (C, D) for the classes of `batches`, one resident batch at a time.

    Args:
        batches: class batches in class order (`stream_class_batches`, or `ClassBatch.of_store`).
        V: the head's weights (C, D).
        steps: the prototypes per class and every step's settings.
        overlap: refine batch b in a worker thread while batch b + 1 is read and factorised
            (False: one after the other, for measuring).

    Returns:
        This process's `StreamResult`; `timings` holds seconds of `features` (reading and the
        forward pass), `nmf` (factorisation and heatmaps), `refinement` (the worker's CPU time) and
        `refinement_wait` (time the device side waited for it).

    Example:
        >>> # plan = plan_class_batches(counts, H * W * D, 16, 4 * 2**30)
        >>> # result = decompose_stream(stream_class_batches(net.features, loader_of, labels,
        >>> #                                                plan, "cuda"), V, StreamSteps(3))
    """
    C = V.shape[0]
    timings = dict.fromkeys(("features", "nmf", "refinement", "refinement_wait"), 0.0)
    pending: list[tuple[list[int], Future]] = []
    finished: list[tuple[list[int], _Finished]] = []
    index: NearestPatchIndex | None = None
    map_size = None

    def collect(oldest: tuple[list[int], Future]) -> None:
        start = time.perf_counter()
        finished.append((oldest[0], oldest[1].result()))
        timings["refinement_wait"] += time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refinement") as worker:
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(iterator, None)
            timings["features"] += time.perf_counter() - start
            if batch is None:
                break
            start = time.perf_counter()
            map_size = batch.map_size
            factorised, embeddings, index = _device_step(batch, V, steps, index)
            timings["nmf"] += time.perf_counter() - start
            job = worker.submit(_finish, factorised, batch, embeddings, steps)
            pending.append((batch.classes, job))
            while len(pending) > (1 if overlap else 0):  # at most one batch waits for the worker
                collect(pending.pop(0))
        while pending:
            collect(pending.pop(0))
    timings["refinement"] = sum(done.seconds for _, done in finished)
    return _assemble(finished, C, steps, map_size, index, timings)


def _queries(classes: Sequence[int], k: int) -> np.ndarray:
    """The query numbers c k + i of `classes`' prototypes among all C k."""
    return (np.asarray(classes)[:, None] * k + np.arange(k)).reshape(-1)


def _assemble(
    finished: list[tuple[list[int], _Finished]],
    C: int,
    steps: StreamSteps,
    map_size: tuple[int, int] | None,
    index: NearestPatchIndex | None,
    timings: dict[str, float],
) -> StreamResult:
    """The batches' results joined, their queries placed among all C k (none: empty ones)."""
    k = steps.prototypes_per_class
    projection = Projection.empty(C * k)
    kmex = None
    if steps.kmeans is not None:
        kmex = Projection.empty(C * steps.kmeans.prototypes_per_class)
    for classes, done in finished:
        projection.place(done.nearest, _queries(classes, k))
        if kmex is not None:
            kmex.place(done.kmex_nearest, _queries(classes, steps.kmeans.prototypes_per_class))
    if not finished:
        return StreamResult(None, projection, None, kmex, map_size, index, timings)
    decomposition = HeadDecomposition.concatenate([done.decomposition for _, done in finished])
    centres = None
    if kmex is not None:
        centres = torch.cat([done.kmex_centres for _, done in finished])
    return StreamResult(decomposition, projection, centres, kmex, map_size, index, timings)
