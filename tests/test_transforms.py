"""Per-image transforms: box crop, resize, colour jitter and normalisation; keypoints follow."""

import pytest
import torch

from proto_lightning.data.transforms import Augmentation, KeypointImageTransform
from tests.helpers import dot_image


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


def test_default_normalisation_is_imagenet_and_eval_is_a_plain_resize():
    """A uniform image of value v/255 becomes (v/255 - mean_c) / std_c per channel (ImageNet statistics)."""
    transform = KeypointImageTransform(8, train=False, augment=Augmentation())
    image = torch.full((3, 16, 16), 200, dtype=torch.uint8)
    out, _ = transform(image, torch.zeros(0, 3))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        assert torch.allclose(out[c], torch.full((8, 8), (200 / 255 - mean[c]) / std[c]), atol=1e-5)


def test_training_images_get_the_eval_resize_geometric_steps_act_on_batches():
    """Per image, training is the plain resize of evaluation: the random crop, flip and rotation
    are applied to whole batches (tests/test_batch_augment.py)."""
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    keypoints = torch.tensor([[12.5, 30.5, 1.0]])
    geometric = Augmentation(hflip=1.0, rotate_degrees=30, scale_min=0.5)
    train = KeypointImageTransform(20, train=True, augment=geometric, mean=(0,) * 3, std=(1,) * 3)
    plain = KeypointImageTransform(
        20, train=False, augment=Augmentation(), mean=(0,) * 3, std=(1,) * 3
    )
    a, b = train(image, keypoints), plain(image, keypoints)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert torch.allclose(b[1], torch.tensor([[12.5 / 3, 30.5 / 2, 1.0]]))  # x / 3, y / 2


def test_colour_jitter_scales_brightness_within_its_range_and_leaves_keypoints():
    """On a grey image contrast and saturation are no-ops; brightness multiplies by U[1 - j, 1 + j]."""
    torch.manual_seed(0)
    transform = KeypointImageTransform(
        16, train=True, augment=Augmentation(color_jitter=0.5), mean=(0,) * 3, std=(1,) * 3
    )
    image = torch.full((3, 16, 16), 100, dtype=torch.uint8)
    keypoints = torch.tensor([[3.5, 4.5, 1.0]])
    values = []
    for _ in range(40):
        out, kp = transform(image, keypoints)
        assert torch.equal(kp, keypoints)
        values.append(out.mean().item() * 255 / 100)  # the brightness factor
    assert 0.5 - 0.01 <= min(values) < 0.65 and 1.35 < max(values) <= 1.5 + 0.01


def test_keypoint_on_the_far_edge_leaves_the_image():
    """Pixel coordinates run over [0, width): x = width is outside, just inside it is not."""
    transform = KeypointImageTransform(
        50, train=False, augment=Augmentation(), mean=(0,) * 3, std=(1,) * 3
    )
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    keypoints = torch.tensor(
        [
            [70.0, 30.0, 1.0],
            [69.9, 69.9, 1.0],
            [20.0, 20.0, 1.0],
            [30.0, 70.0, 1.0],
            [19.5, 30.0, 1.0],
        ]
    )
    _, kp = transform(image, keypoints, box=(20, 20, 50, 50))
    assert kp[:, 2].tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]  # the last: x = -0.5


@pytest.mark.parametrize("augment", [Augmentation(), Augmentation(scale_min=0.999)])
def test_downscaling_is_antialiased(augment: Augmentation):
    """A one-pixel checkerboard shrunk 3x: a low-pass resize gives near-uniform grey; point sampling
    (no antialiasing) would give back a checkerboard of 0 and 1."""
    board = ((torch.arange(48)[:, None] + torch.arange(48)[None, :]) % 2 * 255).to(torch.uint8)
    transform = KeypointImageTransform(16, train=True, augment=augment, mean=(0,) * 3, std=(1,) * 3)
    out, _ = transform(board.expand(3, 48, 48).clone(), torch.zeros(0, 3))
    assert out.std() < 0.15
