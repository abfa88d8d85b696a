"""Any loader a user has, as the dict batches the framework reads: `image`, `label`, `row`, `image_id`.

A user's `DataLoader` may yield `(images, labels)` tuples or our dict batches; rows (dataset indices)
and image ids are numbered when absent, which is why a fit reads its data in order
(`sequential_loader`): row r is then `dataset[r]`, and a prototype's nearest patch can be shown
again from the dataset (or from the image file, when the dataset names one: `image_path`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset

log = logging.getLogger(__name__)


def sequential_loader(loader: DataLoader) -> DataLoader:
    """`loader` itself when it reads its dataset in order, else the same batches in order (no shuffle)."""
    if isinstance(loader.sampler, SequentialSampler) or loader.batch_size is None:
        return loader
    log.info("reading the loader's dataset in order (rows = dataset indices), not shuffled")
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


def dict_batches(
    loader: Iterable, rows: np.ndarray | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches as dicts; `(images, labels, ...)` tuples get rows numbered in order
    (`rows[i]` for the i-th item when the loader reads those dataset items)."""
    seen = 0
    for batch in loader:
        if isinstance(batch, Mapping):
            out = dict(batch)
        elif isinstance(batch, list | tuple) and len(batch) >= 2:
            out = {"image": batch[0], "label": torch.as_tensor(batch[1])}
        else:
            raise TypeError(
                "a loader for fitting yields (images, labels) batches or dicts with 'image' and "
                f"'label'; got a {type(batch).__name__}"
            )
        n = len(out["image"])
        numbered = (
            torch.arange(seen, seen + n) if rows is None else torch.as_tensor(rows[seen:][:n])
        )
        out.setdefault("row", numbered)
        out.setdefault("image_id", out["row"])
        seen += n
        yield out


def class_loader(
    loader: DataLoader, labels: np.ndarray, classes: Sequence[int]
) -> Iterator[dict[str, torch.Tensor]]:
    """The dict batches of `loader`'s dataset items of `classes` only (`labels` the dataset's), in
    dataset order, with the loader's batch size, workers and collation; rows are dataset indices."""
    rows = np.flatnonzero(np.isin(labels, classes))
    subset = DataLoader(
        Subset(loader.dataset, rows.tolist()),
        batch_size=loader.batch_size or 1,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )
    return dict_batches(subset, rows)


def dataset_labels(dataset: Dataset) -> np.ndarray | None:
    """Every item's label in order, when the dataset tells them without decoding images (our datasets'
    `labels`, torchvision folders' `targets`, a `TensorDataset`'s second tensor); else None."""
    for name in ("labels", "targets"):
        found = getattr(dataset, name, None)
        if found is not None and not callable(found):
            return np.asarray(found, dtype=np.int64)
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2:
        return tensors[1].cpu().numpy().astype(np.int64)
    return None


def image_of(dataset: Dataset, row: int) -> torch.Tensor:
    """The (3, H, W) image of dataset row `row` (our datasets: records row, via `by_row`)."""
    item: Any = dataset.by_row(row) if hasattr(dataset, "by_row") else dataset[row]
    return item["image"] if isinstance(item, Mapping) else item[0]


def image_path(dataset: Dataset, row: int) -> str | None:
    """The file row `row` was read from, when the dataset names it (our records, torchvision folders)."""
    records = getattr(dataset, "records", None)
    if records is not None and hasattr(records, "paths"):
        return str(records.paths[row])
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and 0 <= row < len(samples):
        return str(samples[row][0])
    return None
