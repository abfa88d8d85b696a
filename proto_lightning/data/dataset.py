"""A map-style dataset over `ImageRecords` rows that returns image, label and keypoints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from proto_lightning.data.images import load_rgb
from proto_lightning.data.records import ImageRecords
from proto_lightning.data.transforms import KeypointImageTransform, reference_keypoints


def decode_image(path: str | Path) -> torch.Tensor:
    """An image file decoded to (3, H, W) uint8 RGB; `load_rgb`'s error names a bad file."""
    return TF.pil_to_tensor(load_rgb(path))


class PartImageDataset(Dataset):
    """Samples of the chosen rows: `image` (3, S, S), `label`, `keypoints` (P, 4), `image_id`, `row`.

    `keypoints` rows are (part id, x, y, visible) in model input pixels, part ids 1-based as in
    CUB's parts.txt; P = 0 for datasets without part annotations.
    """

    def __init__(
        self,
        records: ImageRecords,
        rows: Sequence[int],
        transform: KeypointImageTransform,
        crop_to_bbox: bool = False,
        cache: dict[int, torch.Tensor] | None = None,
    ) -> None:
        self.records = records
        self.cache = cache  # row -> decoded (3, H, W) uint8, shared by the splits; None: no cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.crop_to_bbox = crop_to_bbox
        self.part_ids = torch.arange(1, len(records.part_names) + 1, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        """Labels of this dataset's samples, in order."""
        return self.records.labels[self.rows]

    def by_row(self, row: int) -> dict[str, torch.Tensor | int]:
        """The sample of records row `row` (e.g. the push image a prototype was projected onto)."""
        i = int(np.searchsorted(self.rows, row))
        if i == len(self.rows) or self.rows[i] != row:
            raise KeyError(f"row {row} is not in this split")
        return self[i]

    def reference_keypoints(self, row: int) -> torch.Tensor:
        """Row `row`'s keypoints (P, 4) as EvalProtoPNet places them in the test image
        (`transforms.reference_keypoints`): on the bounding-box crop when this split crops."""
        box = self.records.boxes[row] if self.crop_to_bbox else None
        hw = (0, 0)
        if box is None:
            with Image.open(self.records.paths[row]) as image:  # reads the header only
                hw = (image.height, image.width)
        placed = reference_keypoints(
            self.records.keypoints[row], box, hw, self.transform.image_size
        )
        return torch.cat([self.part_ids[:, None], placed], dim=1)

    def decoded(self, row: int) -> torch.Tensor:
        """Row `row`'s image file decoded to (3, H, W) uint8; read once when a cache is shared."""
        if self.cache is not None and row in self.cache:
            return self.cache[row]
        image = decode_image(self.records.paths[row])
        if self.cache is not None:
            self.cache[row] = image
        return image

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        row = int(self.rows[i])
        image = self.decoded(row)  # (3, H, W) uint8
        keypoints = torch.from_numpy(self.records.keypoints[row])  # (P, 3)
        box = self.records.boxes[row] if self.crop_to_bbox else None
        image, keypoints = self.transform(image, keypoints, box)
        return {
            "image": image,
            "label": int(self.records.labels[row]),
            "keypoints": torch.cat([self.part_ids[:, None], keypoints], dim=1),
            "image_id": int(self.records.image_ids[row]),
            "row": row,
        }
