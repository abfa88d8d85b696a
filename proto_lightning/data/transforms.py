"""Image transforms that move part keypoints with every geometric change (torchvision v2 KeyPoints)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from proto_lightning.settings import checked_settings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation; every geometric step is applied to image and keypoints alike."""

    hflip: float = 0.0  # probability of a horizontal flip
    rotate_degrees: float = 0.0  # uniform rotation in [-d, d]
    scale_min: float = 1.0  # RandomResizedCrop area scale lower bound (1.0 = plain resize)
    color_jitter: float = 0.0  # brightness/contrast/saturation strength (image only)

    @classmethod
    def from_config(cls, config: Mapping | None) -> Augmentation:
        """Build from a config mapping, refusing keys this class does not know."""
        defaults = {f.name: f.default for f in fields(cls)}
        return cls(**checked_settings(config, defaults, "data.augment"))


def reference_keypoints(
    keypoints: np.ndarray, box: Sequence[float] | None, image_hw: tuple[int, int], size: int
) -> torch.Tensor:
    """Keypoints (P, 3) x, y, visible of the original image -> (P, 3) in the S x S test image, as
    EvalProtoPNet places them (util/local_parts.py, util/eval_interpretability.py).

    Coordinates and the box are truncated to integers (x1 = int(x), x2 = x1 + int(w)), then
    x' = int(S * ((int(x) - x1) / (x2 - x1))) in that order of float operations, Python's int
    truncating toward zero; every part annotated visible (flag 1) stays visible, inside the crop or
    not. Without a box the whole image is the crop.
    """
    if box is None:
        x1, y1, x2, y2 = 0, 0, image_hw[1], image_hw[0]
    else:
        x1, y1 = int(box[0]), int(box[1])
        x2, y2 = x1 + int(box[2]), y1 + int(box[3])
    xy = np.trunc(np.asarray(keypoints[:, :2], dtype=np.float64))  # (P, 2)
    ratio = (xy - [x1, y1]) / [x2 - x1, y2 - y1]
    placed = np.trunc(size * ratio)
    visible = (np.asarray(keypoints[:, 2]) == 1).astype(np.float64)[:, None]
    return torch.from_numpy(np.concatenate([placed, visible], axis=1)).float()


class RandomHorizontalFlip(v2.RandomHorizontalFlip):
    """torchvision's random flip with keypoints in continuous pixel coordinates: x -> W - x.

    torchvision resizes and rotates keypoints as continuous coordinates (a pixel's centre at
    index + 0.5) but flips them as pixel indices (x -> W - 1 - x), which moves a flipped keypoint
    one pixel off its pixel; shifting flipped keypoints by one restores the continuous convention.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Flip `inpt`; a keypoint tensor also moves one pixel right (see the class docstring)."""
        out = super().transform(inpt, params)
        if isinstance(inpt, tv_tensors.KeyPoints):
            shift = torch.tensor([1.0, 0.0], dtype=out.dtype, device=out.device)
            out = tv_tensors.wrap(out.as_subclass(torch.Tensor) + shift, like=out)
        return out


class KeypointImageTransform:
    """Crop (optional box), resize/augment, normalise; keypoints follow into model coordinates.

    Input: a uint8 image (3, H, W) and keypoints (P, 3) as x, y, visible in its pixels.
    Output: a float image (3, S, S) and keypoints (P, 3) in output pixels; a keypoint that leaves
    the image (crop, rotation) is marked invisible, never clamped.
    """

    def __init__(
        self,
        image_size: int,
        train: bool,
        augment: Augmentation,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.image_size = image_size
        size = (image_size, image_size)
        steps: list[v2.Transform] = []
        if train and augment.scale_min < 1.0:
            steps.append(v2.RandomResizedCrop(size, scale=(augment.scale_min, 1.0), antialias=True))
        else:
            steps.append(v2.Resize(size, antialias=True))
        if train and augment.hflip > 0:
            steps.append(RandomHorizontalFlip(augment.hflip))
        if train and augment.rotate_degrees > 0:
            steps.append(v2.RandomRotation(augment.rotate_degrees))
        if train and augment.color_jitter > 0:
            j = augment.color_jitter
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        self.geometric = v2.Compose(steps)
        self.normalize = v2.Compose(
            [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        )

    def __call__(
        self, image: torch.Tensor, keypoints: torch.Tensor, box: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform one image and its keypoints; `box` is x, y, w, h to crop to first."""
        img = tv_tensors.Image(image)
        kps = tv_tensors.KeyPoints(keypoints[:, :2], canvas_size=tuple(image.shape[-2:]))
        if box is not None:
            x, y, w, h = (round(float(v)) for v in box)
            img, kps = TF.crop(img, y, x, h, w), TF.crop(kps, y, x, h, w)
        out = self.geometric({"image": img, "keypoints": kps})
        height, width = out["image"].shape[-2:]
        xy = out["keypoints"].as_subclass(torch.Tensor).float()  # (P, 2)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        visible = (keypoints[:, 2] > 0) & inside
        return self.normalize(out["image"]).as_subclass(torch.Tensor), torch.cat(
            [xy, visible[:, None].float()], dim=1
        )
