"""The one datamodule family every stage shares: train / val / test / push splits."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from proto_lightning.data.dataset import PartImageDataset, decode_image
from proto_lightning.data.records import ImageRecords, read_cub_layout, read_image_folders
from proto_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    KeypointImageTransform,
)
from proto_lightning.errors import ConfigValueError, CorruptImageError
from proto_lightning.settings import require_choice

log = logging.getLogger(__name__)

ON_CORRUPT = ("error", "skip")


def stratified_val_split(
    rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a class-stratified, seeded validation share out of the training rows (none for 0).

    A stratified split needs a validation and a training image of every class: a fraction too
    small or too large for that is refused with the range that works.
    """
    if fraction <= 0:
        return rows, rows[:0]
    n, counts = len(rows), np.unique(labels, return_counts=True)[1]
    classes, n_val = len(counts), int(np.ceil(fraction * n))  # scikit-learn's rounding
    if counts.min() < 2:
        raise ConfigValueError(
            "a class has a single training image, which a stratified validation split cannot "
            "divide: set data.val_fraction=0 for no validation (the last checkpoint is then tested)"
        )
    if n_val < classes or n - n_val < classes:
        low, high = classes / n, (n - classes) / n
        raise ConfigValueError(
            f"data.val_fraction={fraction} carves {n_val} validation images out of {n} training "
            f"images of {classes} classes, but a stratified split needs at least one of each class "
            f"on both sides: set data.val_fraction between {low:.3f} and {high:.3f}, or "
            "data.val_fraction=0 for no validation (the last checkpoint is then tested)"
        )
    train, val = train_test_split(rows, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


class PartDataModule(L.LightningDataModule):
    """Splits of an `ImageRecords` index: train (augmented), val, test and push (train, no aug).

    Subclasses only say how to read the index (`_read_records`). Val is carved from train by a
    seeded, class-stratified fraction; push is the remaining train rows without augmentation,
    as ProtoPNet's push set.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 224,
        crop_to_bbox: bool = False,
        val_fraction: float = 0.1,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: Mapping | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        on_corrupt: str = "error",
        cache_images: bool = False,
    ) -> None:
        super().__init__()
        require_choice(on_corrupt, ON_CORRUPT, "data.on_corrupt")
        self.root = Path(root)
        self.image_size = image_size
        self.crop_to_bbox = crop_to_bbox
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.augment = Augmentation.from_config(augment)
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.on_corrupt = on_corrupt
        self.cache_images = cache_images
        self.skipped: list[Path] = []

    def _read_records(self) -> ImageRecords:
        raise NotImplementedError

    @cached_property
    def records(self) -> ImageRecords:
        """The dataset index, read once."""
        return self._read_records()

    @property
    def num_classes(self) -> int:
        """Number of classes (reads the index if needed)."""
        return self.records.num_classes

    @property
    def num_parts(self) -> int:
        """Number of annotated parts (0 without keypoints)."""
        return len(self.records.part_names)

    def _readable(self, rows: np.ndarray, cache: dict[int, torch.Tensor] | None) -> np.ndarray:
        """With on_corrupt=skip, drop rows whose image cannot be decoded, logging how many; a
        decoded image goes into `cache` (when images are cached), so it is decoded only once."""
        if self.on_corrupt == "error":
            return rows
        keep = []
        for row in rows:
            try:
                image = decode_image(self.records.paths[row])
                if cache is not None:
                    cache[int(row)] = image
                keep.append(row)
            except CorruptImageError as err:
                self.skipped.append(self.records.paths[row])
                log.warning("skipping unreadable image: %s", err)
        if len(keep) < len(rows):
            log.warning("skipped %d unreadable images of %d", len(rows) - len(keep), len(rows))
        return np.asarray(keep, dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        """Build the four splits (idempotent)."""
        if hasattr(self, "train_set"):
            return
        records = self.records
        all_rows = np.arange(len(records.paths))
        train_rows = all_rows[records.is_train]
        test_rows = all_rows[~records.is_train]
        train_rows, val_rows = stratified_val_split(
            train_rows, records.labels[train_rows], self.val_fraction, self.seed
        )
        self.skipped = []
        cache = {} if self.cache_images else None  # one per datamodule (per loader worker)
        train_rows, val_rows, test_rows = (
            self._readable(r, cache) for r in (train_rows, val_rows, test_rows)
        )
        train_tf = KeypointImageTransform(self.image_size, True, self.augment, self.mean, self.std)
        eval_tf = KeypointImageTransform(self.image_size, False, self.augment, self.mean, self.std)
        crop = self.crop_to_bbox
        self.train_set = PartImageDataset(records, train_rows, train_tf, crop, cache)
        self.val_set = PartImageDataset(records, val_rows, eval_tf, crop, cache)
        self.test_set = PartImageDataset(records, test_rows, eval_tf, crop, cache)
        self.push_set = PartImageDataset(records, train_rows, eval_tf, crop, cache)
        log.info(
            "%s: %d classes, train %d, val %d, test %d images",
            self.root,
            records.num_classes,
            len(train_rows),
            len(val_rows),
            len(test_rows),
        )

    def _loader(self, dataset: Dataset, train: bool, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train if sampler is None else None,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # page-locked batches, copied without blocking
        )

    def train_dataloader(self) -> DataLoader:
        """Augmented, shuffled training batches."""
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches (carved from train, no augmentation); none with `val_fraction=0`."""
        return self._loader(self.val_set, train=False) if len(self.val_set) else []

    def test_dataloader(self) -> DataLoader:
        """Test batches; under DDP each rank reads its own images and none twice (Lightning's
        `UnrepeatedDistributedSampler`, not the padding `DistributedSampler`), so summed test
        metrics count every test image exactly once."""
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = UnrepeatedDistributedSampler(self.test_set, shuffle=False)
        return self._loader(self.test_set, train=False, sampler=sampler)

    def subset_loader(self, dataset: Dataset, indices: Sequence[int]) -> DataLoader:
        """An evaluation loader (no shuffling, no augmentation) over some items of a split, in order."""
        return self._loader(Subset(dataset, list(indices)), train=False)

    def push_dataloader(self, classes: Sequence[int] | None = None) -> DataLoader:
        """Training images without augmentation, in a fixed order (for prototype projection);
        with `classes`, only those classes' images (a DDP rank's share)."""
        if classes is None:
            return self._loader(self.push_set, train=False)
        return self.subset_loader(
            self.push_set, np.flatnonzero(np.isin(self.push_set.labels, classes))
        )


class CUB200DataModule(PartDataModule):
    """CUB-200-2011 on-disk layout (also the generated part dataset), with part keypoints."""

    def _read_records(self) -> ImageRecords:
        return read_cub_layout(self.root, need_boxes=self.crop_to_bbox)


class ImageFolderDataModule(PartDataModule):
    """Class-folder datasets (`root/train/<class>/`, `root/test/<class>/`); no keypoints."""

    def __init__(self, root: str | Path, **kwargs) -> None:
        if kwargs.get("crop_to_bbox"):
            raise ConfigValueError(
                "ImageFolderDataModule has no bounding boxes: set data.crop_to_bbox=false"
            )
        super().__init__(root, **kwargs)

    def _read_records(self) -> ImageRecords:
        return read_image_folders(self.root)
