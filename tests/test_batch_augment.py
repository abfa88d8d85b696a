"""Batch augmentation: a dot drawn at a keypoint is found where the moved keypoint says; flip, rotation
and crop follow their definitions; only training batches are warped."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from proto_lightning.data import CUB200DataModule
from proto_lightning.data.batch_augment import BatchAugmentation, random_maps
from proto_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Augmentation
from tests.helpers import dot_image

PLAIN = ((0.0,) * 3, (1.0,) * 3)  # mean, std: images stay in [0, 1], black fill is 0


def brightest(image: torch.Tensor) -> np.ndarray:
    """Intensity-weighted centre of the dot, in pixel-centre coordinates."""
    gray = image.mean(0)
    gray = torch.where(gray > gray.max() * 0.5, gray, torch.zeros_like(gray))
    ys, xs = torch.meshgrid(torch.arange(gray.shape[0]), torch.arange(gray.shape[1]), indexing="ij")
    return np.array([(gray * xs).sum() / gray.sum(), (gray * ys).sum() / gray.sum()])


def dot_batch(size: int, n: int) -> dict[str, torch.Tensor]:
    """n images with one dot each at a different place, and that dot's keypoint (id, x, y, visible)."""
    xy = [(20 + 3 * i, 15 + 2 * i) for i in range(n)]
    images = torch.stack([dot_image(size, size, x, y) for x, y in xy]).float() / 255
    keypoints = torch.tensor([[[1.0, x + 0.5, y + 0.5, 1.0]] for x, y in xy])  # pixel centres
    return {"image": images, "keypoints": keypoints, "label": torch.zeros(n, dtype=torch.long)}


@pytest.mark.parametrize(
    "augment",
    [
        Augmentation(hflip=1.0),
        Augmentation(scale_min=0.5),
        Augmentation(rotate_degrees=30),
        Augmentation(hflip=0.5, rotate_degrees=30, scale_min=0.6),
    ],
)
def test_dot_is_found_at_the_moved_keypoint(augment: Augmentation):
    torch.manual_seed(0)
    batch = dot_batch(96, 20)
    out = BatchAugmentation(augment, *PLAIN)(batch)
    assert out["image"].shape == batch["image"].shape and torch.equal(out["label"], batch["label"])
    checked = 0
    for image, kp in zip(out["image"], out["keypoints"][:, 0], strict=True):
        if kp[3] == 1:
            found = brightest(image) + 0.5
            assert np.abs(found - kp[1:3].numpy()).max() < 0.75, (found, kp)
            checked += 1
        else:
            assert image.max() < 0.3  # invisible only when the dot really left the image
    assert checked >= 10


def test_a_certain_flip_mirrors_pixels_exactly_and_keypoints_in_continuous_coordinates():
    """hflip = 1: every output pixel centre samples exactly one input pixel centre, x -> S - x."""
    batch = dot_batch(40, 3)
    out = BatchAugmentation(Augmentation(hflip=1.0), *PLAIN)(batch)
    assert torch.allclose(out["image"], batch["image"].flip(-1), atol=1e-6)
    expected = batch["keypoints"].clone()
    expected[..., 1] = 40 - expected[..., 1]
    assert torch.allclose(out["keypoints"], expected, atol=1e-5)


def test_rotation_turns_keypoints_about_the_centre_and_fills_with_black():
    """A keypoint 20 px right of the centre stays 20 px from it, at angles within +-d that vary over
    draws; the corners a turn brings in from outside are black in normalised units, (0 - mean) / std."""
    torch.manual_seed(1)
    n, size = 12, 64
    batch = {
        "image": torch.full((n, 3, size, size), 5.0),  # any value but black
        "keypoints": torch.tensor([[[1.0, 52.0, 32.0, 1.0]]]).repeat(n, 1, 1),
    }
    augment = BatchAugmentation(Augmentation(rotate_degrees=40), IMAGENET_MEAN, IMAGENET_STD)
    out = augment(batch)
    dx, dy = out["keypoints"][:, 0, 1] - 32, out["keypoints"][:, 0, 2] - 32
    assert torch.allclose(torch.hypot(dx, dy), torch.full((n,), 20.0), atol=1e-3)
    angles = torch.rad2deg(torch.atan2(dy, dx))
    assert angles.abs().max() <= 40 + 1e-3 and angles.max() - angles.min() > 20
    black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    turned = angles.abs() > 10  # the corner pixel (0, 0) then comes from outside the image
    assert turned.any()
    assert torch.allclose(out["image"][turned][:, :, 0, 0], black.expand(int(turned.sum()), 3))
    assert torch.allclose(out["image"][:, :, 32, 32], torch.full((n, 3), 5.0))  # the centre stays


def test_crops_draw_area_and_aspect_ratio_as_randomresizedcrop_and_stay_inside():
    """Without flip and rotation a map is x -> (x - x0) S / w: the crop's area fraction is
    1 / (m00 m11), uniform on [scale_min, 1] (mean (1 + scale_min) / 2), its aspect ratio w / h =
    m11 / m00 within [3/4, 4/3], and the whole output square comes from inside the input."""
    torch.manual_seed(0)
    size, scale_min = 50, 0.5
    maps = random_maps(4000, size, Augmentation(scale_min=scale_min)).double()
    area = 1 / (maps[:, 0, 0] * maps[:, 1, 1])
    ratio = maps[:, 1, 1] / maps[:, 0, 0]
    assert area.min() >= scale_min - 1e-6 and area.max() <= 1 + 1e-6
    assert area.mean() == pytest.approx((1 + scale_min) / 2, abs=0.02)
    assert ratio.min() >= 3 / 4 - 1e-6 and ratio.max() <= 4 / 3 + 1e-6
    corners = torch.tensor([[0.0, 0.0, 1.0], [size, size, 1.0]], dtype=torch.float64)
    sources = corners @ torch.linalg.inv(maps).transpose(1, 2)  # (n, 2, 3) input points
    assert sources[..., :2].min() >= -1e-6 and sources[..., :2].max() <= size + 1e-6
    assert math.isclose(float(maps[:, 0, 1].abs().max()), 0.0, abs_tol=1e-9)  # no shear, no turn


def test_only_training_batches_are_warped(parts_root: Path):
    """The datamodule's on_after_batch_transfer flips a batch while the trainer trains and passes it
    unchanged while it validates or tests, or when no geometric step is switched on."""
    dm = CUB200DataModule(
        parts_root, image_size=48, batch_size=4, val_fraction=0.25, augment={"hflip": 1.0}
    )
    dm.setup()
    batch = next(iter(dm.push_dataloader()))
    dm.trainer = SimpleNamespace(training=True)
    flipped = dm.on_after_batch_transfer(batch, 0)
    assert torch.allclose(flipped["image"], batch["image"].flip(-1), atol=1e-5)
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch
    plain = CUB200DataModule(parts_root, image_size=48, val_fraction=0.25)
    plain.trainer = SimpleNamespace(training=True)
    assert plain.on_after_batch_transfer(batch, 0) is batch
