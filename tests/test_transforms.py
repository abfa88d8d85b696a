"""Keypoints follow every geometric transform: a dot drawn at a keypoint is found where it says."""

import numpy as np
import pytest
import torch

from proto_lightning.data.transforms import Augmentation, KeypointImageTransform


def dot_image(h: int, w: int, x: int, y: int) -> torch.Tensor:
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[:, y - 1 : y + 2, x - 1 : x + 2] = 255  # a 3x3 dot centred on pixel (x, y)
    return image


def brightest(image: torch.Tensor) -> np.ndarray:
    """Intensity-weighted centre of the dot, in pixel-centre coordinates."""
    gray = image.mean(0)
    gray = torch.where(gray > gray.max() * 0.5, gray, torch.zeros_like(gray))
    ys, xs = torch.meshgrid(torch.arange(gray.shape[0]), torch.arange(gray.shape[1]), indexing="ij")
    return np.array([(gray * xs).sum() / gray.sum(), (gray * ys).sum() / gray.sum()])


@pytest.mark.parametrize(
    "augment",
    [
        Augmentation(),  # plain resize
        Augmentation(hflip=1.0),
        Augmentation(scale_min=0.5),
        Augmentation(hflip=1.0, rotate_degrees=30, scale_min=0.6),
    ],
)
def test_dot_is_found_at_the_transformed_keypoint(augment: Augmentation):
    torch.manual_seed(0)
    transform = KeypointImageTransform(
        96, train=True, augment=augment, mean=(0, 0, 0), std=(1, 1, 1)
    )
    checked = 0
    for trial in range(20):
        x, y = 60 + trial * 3, 40 + trial * 2
        image = dot_image(120, 200, x, y)
        keypoints = torch.tensor([[x + 0.5, y + 0.5, 1.0]])  # pixel centre, continuous coordinates
        out, kp = transform(image, keypoints)
        assert out.shape == (3, 96, 96)
        if kp[0, 2] == 1:
            found = brightest(out) + 0.5
            assert np.abs(found - kp[0, :2].numpy()).max() < 1.5, (trial, found, kp)
            checked += 1
        else:
            assert out.max() < 0.3  # invisible only when the dot really left the image
    assert checked >= 10


def test_box_crop_shifts_keypoints_and_marks_outside_invisible():
    transform = KeypointImageTransform(
        50, train=False, augment=Augmentation(), mean=(0, 0, 0), std=(1, 1, 1)
    )
    image = dot_image(100, 100, 30, 40)
    keypoints = torch.tensor([[30.5, 40.5, 1.0], [90.0, 90.0, 1.0], [25.0, 25.0, 0.0]])
    _, kp = transform(image, keypoints, box=(20, 20, 50, 50))  # crop x, y in [20, 70), no resize
    assert torch.allclose(kp[0], torch.tensor([10.5, 20.5, 1.0]))
    assert kp[1, 2] == 0  # left the crop: invisible, never clamped onto the border
    assert kp[2, 2] == 0  # was invisible: stays invisible
