"""Collect the frozen black box's patch feature vectors of the push split, grouped by class.

Two layouts, filled by one writer (`write_patches`):
  - a class batch (`collect_class_batch`): the images of a few consecutive classes, read and kept
    on the device as one zero-padded tensor F (C_b, N_max, D), each class's patches first in its row;
    the streaming decomposition (`prototypes.stream`) makes one, uses it and releases it;
  - a store (`collect_features`): every class's patches in one host array, class by class (F_c of the
    method page is a contiguous slice), in RAM while it fits `ram_budget_gb`, otherwise memory-mapped
    in `spill_dir`: the path for hosts short of memory, and for loaders whose labels are unknown
    before the pass.
Every patch remembers its dataset row, image id and (h, w) location.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proto_lightning.errors import ConfigValueError

log = logging.getLogger(__name__)
MISMATCH = "the loader yielded other images than `labels` describes"
SPILL_FILE = "push_features.f32"


@dataclass
class FeatureStore:
    """Patch feature vectors (N_patches, D) ordered by class, with per-row provenance."""

    features: np.ndarray  # (N_patches, D) float32, ndarray or memmap
    rows: np.ndarray  # (N_patches,) int64 dataset row of the image
    image_ids: np.ndarray  # (N_patches,)
    locations: np.ndarray  # (N_patches, 2) (h, w)
    labels: np.ndarray  # (N_patches,)
    offsets: np.ndarray  # (C + 1,) class c owns rows offsets[c]:offsets[c+1]
    map_size: tuple[int, int]  # (H, W)

    def class_slice(self, c: int) -> np.ndarray:
        """F_c: the feature vectors of class c's images, (n_c H W, D)."""
        return self.features[self.offsets[c] : self.offsets[c + 1]]


@dataclass
class ClassBatch:
    """The patches of a few consecutive classes, resident on the device while they are decomposed."""

    classes: list[int]  # (C_b,) class ids
    F: torch.Tensor  # (C_b, N_max, D) float32 on the device; rows past counts[i] are zero
    counts: np.ndarray  # (C_b,) patches of each class, n_c H W
    rows: np.ndarray  # (C_b, N_max) dataset row of each patch's image (-1 on padding)
    image_ids: np.ndarray  # (C_b, N_max)
    locations: np.ndarray  # (C_b, N_max, 2) (h, w)
    map_size: tuple[int, int]  # (H, W)

    @classmethod
    def of_store(cls, store: FeatureStore, classes: Sequence[int], device) -> ClassBatch:
        """The batch of `classes` copied out of a store onto `device`."""
        counts = np.array([store.offsets[c + 1] - store.offsets[c] for c in classes])
        n_max, D = int(counts.max()), store.features.shape[1]
        F = torch.zeros(len(classes), n_max, D, device=device)
        rows = np.full((len(classes), n_max), -1, dtype=np.int64)
        image_ids, locations = rows.copy(), np.full((len(classes), n_max, 2), -1, dtype=np.int64)
        for i, c in enumerate(classes):
            part = slice(int(store.offsets[c]), int(store.offsets[c + 1]))
            F[i, : counts[i]] = torch.from_numpy(np.asarray(store.features[part])).to(device)
            rows[i, : counts[i]] = store.rows[part]
            image_ids[i, : counts[i]] = store.image_ids[part]
            locations[i, : counts[i]] = store.locations[part]
        return cls(list(classes), F, counts, rows, image_ids, locations, store.map_size)


def allocate(n_rows: int, dim: int, ram_budget_gb: float, spill_dir: Path) -> np.ndarray:
    """An (n_rows, dim) float32 array in RAM if within budget, else a memory-mapped file."""
    size_gb = n_rows * dim * 4 / 2**30
    if size_gb <= ram_budget_gb:
        return np.empty((n_rows, dim), dtype=np.float32)
    spill_dir.mkdir(parents=True, exist_ok=True)
    path = spill_dir / SPILL_FILE
    log.info(
        "feature store of %.2f GiB exceeds the %.2f GiB budget: memory-mapping %s",
        size_gb,
        ram_budget_gb,
        path,
    )
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, dim))


def require_labels_below(labels: np.ndarray, num_classes: int) -> None:
    """Refuse labels outside 0..C-1: the head has no row for them."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigValueError(
            f"the data's labels run from {labels.min()} to {labels.max()}, but the model's head has "
            f"{num_classes} classes (0..{num_classes - 1}): fit it on the data it was trained on"
        )


@dataclass
class Patches:
    """What `write_patches` filled: features in their slots and each slot's provenance."""

    features: np.ndarray | torch.Tensor  # (slots H W, D)
    rows: np.ndarray  # (slots H W,) int64, -1 where no image was written
    image_ids: np.ndarray
    locations: np.ndarray  # (slots H W, 2)
    labels: np.ndarray
    map_size: tuple[int, int]


def write_patches(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[dict[str, torch.Tensor]],
    first_slot: np.ndarray,
    capacity: np.ndarray,
    slots: int,
    allocate_features: Callable[[int, int], np.ndarray | torch.Tensor],
    device: torch.device | str,
) -> Patches:
    """Run `features_fn` (images -> (B, D, H, W)) over `loader`; class c's images fill image slots
    first_slot[c], first_slot[c] + 1, .. in loader order (at most capacity[c] of them), each slot
    H W rows of `allocate_features(slots H W, D)` (a host array, or a tensor on the device)."""
    next_slot = first_slot.copy()  # (C,) next free image slot per class
    out: Patches | None = None
    for batch in loader:
        fmap = features_fn(batch["image"].to(device, non_blocking=True)).float()  # (B, D, H, W)
        B, D, H, W = fmap.shape
        if out is None:
            n = slots * H * W
            out = Patches(
                features=allocate_features(n, D),
                rows=np.full(n, -1, dtype=np.int64),
                image_ids=np.full(n, -1, dtype=np.int64),
                locations=np.full((n, 2), -1, dtype=np.int64),
                labels=np.full(n, -1, dtype=np.int64),
                map_size=(H, W),
            )
        batch_labels = torch.as_tensor(batch["label"]).numpy()
        image_slots = np.empty(B, dtype=np.int64)
        for c in np.unique(batch_labels):  # assign image slots within each class, in order
            members = np.flatnonzero(batch_labels == c)
            image_slots[members] = next_slot[c] + np.arange(len(members))
            next_slot[c] += len(members)
            if next_slot[c] > first_slot[c] + capacity[c]:
                raise ValueError(MISMATCH)
        index = (image_slots[:, None] * H * W + np.arange(H * W)[None, :]).reshape(-1)  # (B HW,)
        patches = fmap.permute(0, 2, 3, 1).reshape(B * H * W, D)  # (B HW, D)
        if isinstance(out.features, torch.Tensor):
            out.features[torch.from_numpy(index).to(out.features.device)] = patches
        else:
            out.features[index] = patches.cpu().numpy()
        hw = np.stack(np.divmod(np.arange(H * W), W), axis=1)  # (HW, 2) as (h, w)
        out.rows[index] = np.repeat(torch.as_tensor(batch["row"]).numpy(), H * W)
        out.image_ids[index] = np.repeat(torch.as_tensor(batch["image_id"]).numpy(), H * W)
        out.locations[index] = np.tile(hw, (B, 1))
        out.labels[index] = np.repeat(batch_labels, H * W)
    if out is None:
        raise ValueError("the push split is empty: no features to decompose")
    if not (next_slot == first_slot + capacity).all():
        raise ValueError(MISMATCH)
    return out


@torch.inference_mode()
def collect_class_batch(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[dict[str, torch.Tensor]],
    labels: np.ndarray,
    classes: Sequence[int],
    num_classes: int,
    device: torch.device | str = "cpu",
) -> ClassBatch:
    """The class batch of `classes` (consecutive ids) from a loader of exactly their images, whose
    labels are `labels` in loader order: features written straight into the padded device tensor."""
    require_labels_below(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)  # (C,) images
    n_max = int(counts[list(classes)].max())
    first_slot = np.zeros(num_classes, dtype=np.int64)
    first_slot[list(classes)] = np.arange(len(classes)) * n_max
    patches = write_patches(
        features_fn,
        loader,
        first_slot,
        counts,
        len(classes) * n_max,
        lambda n, D: torch.zeros(n, D, device=device),
        device,
    )
    H, W = patches.map_size
    shape = (len(classes), n_max * H * W)
    return ClassBatch(
        classes=list(classes),
        F=patches.features.view(*shape, -1),
        counts=counts[list(classes)] * H * W,
        rows=patches.rows.reshape(shape),
        image_ids=patches.image_ids.reshape(shape),
        locations=patches.locations.reshape(*shape, 2),
        map_size=(H, W),
    )


@torch.inference_mode()
def collect_features(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[dict[str, torch.Tensor]],
    labels: np.ndarray | None,
    num_classes: int,
    ram_budget_gb: float,
    spill_dir: Path,
    device: torch.device | str = "cpu",
) -> FeatureStore:
    """Run `features_fn` (images -> (B, D, H, W)) over `loader`, writing each patch into its class's slot.

    `labels` are the labels of the loader's dataset, in order (used to size the class slots first);
    None when they are only known from the batches: the patches are then gathered in RAM first and
    laid out by class at the end (twice the store's memory at that moment).
    """
    if labels is None:
        return _collect_unsized(features_fn, loader, num_classes, device)
    require_labels_below(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    image_offsets = np.concatenate([[0], np.cumsum(counts)])
    patches = write_patches(
        features_fn,
        loader,
        image_offsets[:-1],
        counts,
        int(counts.sum()),
        lambda n, D: allocate(n, D, ram_budget_gb, spill_dir),
        device,
    )
    H, W = patches.map_size
    return FeatureStore(
        patches.features,
        patches.rows,
        patches.image_ids,
        patches.locations,
        patches.labels,
        image_offsets * H * W,
        (H, W),
    )


def _collect_unsized(
    features_fn, loader: Iterable[dict[str, torch.Tensor]], num_classes: int, device
) -> FeatureStore:
    """`collect_features` when the labels are not known before the pass (see there)."""
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "row", "id", "label")}
    map_size = None
    for batch in loader:
        fmap = features_fn(batch["image"].to(device)).float()  # (B, D, H, W)
        B, D, H, W = fmap.shape
        map_size = (H, W)
        chunks["f"].append(fmap.permute(0, 2, 3, 1).reshape(B * H * W, D).cpu().numpy())
        for key, name in (("row", "row"), ("id", "image_id"), ("label", "label")):
            chunks[key].append(np.repeat(torch.as_tensor(batch[name]).numpy(), H * W))
    if map_size is None:
        raise ValueError("the push split is empty: no features to decompose")
    labels = np.concatenate(chunks["label"]).astype(np.int64)
    require_labels_below(labels, num_classes)
    order = np.argsort(labels, kind="stable")  # class-major, arrival order within a class
    H, W = map_size
    hw = np.stack(np.divmod(np.arange(H * W), W), axis=1)  # (HW, 2) as (h, w)
    counts = np.bincount(labels, minlength=num_classes)
    return FeatureStore(
        features=np.concatenate(chunks["f"])[order],
        rows=np.concatenate(chunks["row"]).astype(np.int64)[order],
        image_ids=np.concatenate(chunks["id"]).astype(np.int64)[order],
        locations=np.tile(hw, (len(labels) // (H * W), 1))[order],
        labels=labels[order],
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        map_size=map_size,
    )
