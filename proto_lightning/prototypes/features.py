"""Collect the frozen black box's feature vectors of the push split, grouped by class, in bounded memory.

Rows are laid out class by class (offsets known before the pass from the labels), so F_c of DESIGN.md
2.1 is a contiguous slice. The store lives in RAM while it fits `ram_budget_gb`, otherwise in a
memory-mapped file (`spill_dir`, default: the run folder), so the host never holds a Python list of
every feature map. Every stored row remembers its dataset row, image id and (h, w) location.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proto_lightning.errors import ConfigValueError

log = logging.getLogger(__name__)
MISMATCH = "the loader yielded other images than `labels` describes"


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


def allocate(n_rows: int, dim: int, ram_budget_gb: float, spill_dir: Path) -> np.ndarray:
    """An (n_rows, dim) float32 array in RAM if within budget, else a memory-mapped file."""
    size_gb = n_rows * dim * 4 / 2**30
    if size_gb <= ram_budget_gb:
        return np.empty((n_rows, dim), dtype=np.float32)
    spill_dir.mkdir(parents=True, exist_ok=True)
    path = spill_dir / "push_features.f32"
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


@torch.inference_mode()
def collect_features(
    features_fn,
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
    next_image = image_offsets[:-1].copy()  # next free image slot per class
    store: FeatureStore | None = None
    for batch in loader:
        fmap = features_fn(batch["image"].to(device)).float()  # (B, D, H, W)
        B, D, H, W = fmap.shape
        if store is None:
            n = int(counts.sum()) * H * W
            store = FeatureStore(
                features=allocate(n, D, ram_budget_gb, spill_dir),
                rows=np.empty(n, dtype=np.int64),
                image_ids=np.empty(n, dtype=np.int64),
                locations=np.empty((n, 2), dtype=np.int64),
                labels=np.empty(n, dtype=np.int64),
                offsets=image_offsets * H * W,
                map_size=(H, W),
            )
        patches = fmap.permute(0, 2, 3, 1).reshape(B, H * W, D).cpu().numpy()  # (B, HW, D)
        hw = np.stack(np.divmod(np.arange(H * W), W), axis=1)  # (HW, 2) as (h, w)
        batch_labels = batch["label"].numpy()
        slots = np.empty(B, dtype=np.int64)
        for c in np.unique(batch_labels):  # assign image slots within each class, in order
            members = np.flatnonzero(batch_labels == c)
            slots[members] = next_image[c] + np.arange(len(members))
            next_image[c] += len(members)
            if next_image[c] > image_offsets[c + 1]:
                raise ValueError(MISMATCH)
        starts = slots * H * W  # (B,)
        index = (starts[:, None] + np.arange(H * W)[None, :]).reshape(-1)  # (B HW,)
        store.features[index] = patches.reshape(-1, D)
        store.rows[index] = np.repeat(batch["row"].numpy(), H * W)
        store.image_ids[index] = np.repeat(batch["image_id"].numpy(), H * W)
        store.locations[index] = np.tile(hw, (B, 1))
        store.labels[index] = np.repeat(batch_labels, H * W)
    if store is None:
        raise ValueError("the push split is empty: no features to decompose")
    if not (next_image == image_offsets[1:]).all():
        raise ValueError(MISMATCH)
    return store


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
