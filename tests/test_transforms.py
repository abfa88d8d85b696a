"""Keypoints follow every geometric transform: a dot drawn at a keypoint is found where it says."""

import math

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

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
            assert np.abs(found - kp[0, :2].numpy()).max() < 0.75, (trial, found, kp)
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


def test_default_normalisation_is_imagenet_and_eval_is_a_plain_resize():
    """A uniform image of value v/255 becomes (v/255 - mean_c) / std_c per channel (ImageNet statistics)."""
    transform = KeypointImageTransform(8, train=False, augment=Augmentation())
    image = torch.full((3, 16, 16), 200, dtype=torch.uint8)
    out, _ = transform(image, torch.zeros(0, 3))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        assert torch.allclose(out[c], torch.full((8, 8), (200 / 255 - mean[c]) / std[c]), atol=1e-5)


def test_training_without_augmentation_is_the_eval_resize():
    """scale_min = 1 (no RandomResizedCrop, whose aspect-ratio jitter would move pixels): train = eval."""
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    keypoints = torch.tensor([[12.5, 30.5, 1.0]])
    train = KeypointImageTransform(
        20, train=True, augment=Augmentation(), mean=(0,) * 3, std=(1,) * 3
    )
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


def test_a_certain_flip_mirrors_keypoints_and_evaluation_never_augments():
    """hflip = 1 always mirrors: x -> W - x (continuous coordinates). With train=False the same
    augmentation settings change nothing: eval images are a plain resize."""
    augment = Augmentation(hflip=1.0, rotate_degrees=30, color_jitter=0.5)
    keypoints = torch.tensor([[10.5, 20.5, 1.0]])
    image = dot_image(40, 40, 10, 20)
    flip_only = KeypointImageTransform(
        40, train=True, augment=Augmentation(hflip=1.0), mean=(0,) * 3, std=(1,) * 3
    )
    out, kp = flip_only(image, keypoints)
    assert torch.allclose(kp, torch.tensor([[29.5, 20.5, 1.0]]))
    assert torch.equal(out, image.flip(-1).float() / 255)
    evaluation = KeypointImageTransform(
        40, train=False, augment=augment, mean=(0,) * 3, std=(1,) * 3
    )
    out, kp = evaluation(image, keypoints)
    assert torch.equal(kp, keypoints) and torch.equal(out, image.float() / 255)


def test_rotation_turns_keypoints_about_the_centre():
    """RandomRotation(d): a keypoint at distance r from the centre stays at r; over draws it moves."""
    torch.manual_seed(1)
    transform = KeypointImageTransform(
        64, train=True, augment=Augmentation(rotate_degrees=40), mean=(0,) * 3, std=(1,) * 3
    )
    keypoints = torch.tensor([[52.0, 32.0, 1.0]])  # 20 px right of the centre (32, 32)
    angles = []
    for _ in range(10):
        _, kp = transform(torch.zeros(3, 64, 64, dtype=torch.uint8), keypoints)
        dx, dy = float(kp[0, 0]) - 32, float(kp[0, 1]) - 32
        assert math.hypot(dx, dy) == pytest.approx(20.0, abs=1e-3)
        angles.append(math.degrees(math.atan2(dy, dx)))
    assert max(abs(a) for a in angles) <= 40 + 1e-3 and max(angles) - min(angles) > 20
    slight = KeypointImageTransform(
        64, train=True, augment=Augmentation(rotate_degrees=1), mean=(0,) * 3, std=(1,) * 3
    )
    moved = [
        slight(torch.zeros(3, 64, 64, dtype=torch.uint8), keypoints)[1][0, 1] for _ in range(5)
    ]
    assert max(abs(float(y) - 32) for y in moved) > 1e-3  # even 1 degree turns it


@pytest.mark.parametrize("augment", [Augmentation(), Augmentation(scale_min=0.999)])
def test_downscaling_is_antialiased(augment: Augmentation):
    """A one-pixel checkerboard shrunk 3x: a low-pass resize gives near-uniform grey; point sampling
    (no antialiasing) would give back a checkerboard of 0 and 1."""
    board = ((torch.arange(48)[:, None] + torch.arange(48)[None, :]) % 2 * 255).to(torch.uint8)
    transform = KeypointImageTransform(16, train=True, augment=augment, mean=(0,) * 3, std=(1,) * 3)
    out, _ = transform(board.expand(3, 48, 48).clone(), torch.zeros(0, 3))
    assert out.std() < 0.15


class ContinuousFlip(v2.RandomHorizontalFlip):
    """torchvision's flip with keypoints mirrored as continuous coordinates (x -> W - x)."""

    def transform(self, inpt, params):
        out = super().transform(inpt, params)
        if isinstance(inpt, tv_tensors.KeyPoints):
            out = tv_tensors.wrap(
                out.as_subclass(torch.Tensor) + torch.tensor([1.0, 0.0]), like=out
            )
        return out


def compose_reference(image_size: int, augment: Augmentation, box):
    """The same steps run by torchvision v2's Compose over tv_tensors (its documented usage): the
    reference the direct-kernel transform must equal bit for bit. Returns image, keypoints x, y."""
    size = (image_size, image_size)
    steps = []
    if augment.scale_min < 1.0:
        steps.append(v2.RandomResizedCrop(size, scale=(augment.scale_min, 1.0), antialias=True))
    else:
        steps.append(v2.Resize(size, antialias=True))
    if augment.hflip > 0:
        steps.append(ContinuousFlip(augment.hflip))
    if augment.rotate_degrees > 0:
        steps.append(v2.RandomRotation(augment.rotate_degrees))
    if augment.color_jitter > 0:
        j = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.2] * 3, [0.3] * 3)]
    compose = v2.Compose(steps)

    def run(image: torch.Tensor, keypoints: torch.Tensor):
        img = tv_tensors.Image(image)
        kps = tv_tensors.KeyPoints(keypoints[:, :2], canvas_size=tuple(image.shape[-2:]))
        if box is not None:
            x, y, w, h = box
            img, kps = v2.functional.crop(img, y, x, h, w), v2.functional.crop(kps, y, x, h, w)
        out = compose({"image": img, "keypoints": kps})
        return out["image"].as_subclass(torch.Tensor), out["keypoints"].as_subclass(torch.Tensor)

    return run


@pytest.mark.parametrize(
    "augment",
    [
        Augmentation(),
        Augmentation(hflip=0.5, rotate_degrees=10, scale_min=0.8),  # the quick-start's
        Augmentation(hflip=0.5, rotate_degrees=30, scale_min=0.5, color_jitter=0.4),
    ],
)
@pytest.mark.parametrize("box", [None, (7, 5, 70, 52)])
def test_equals_torchvision_compose_bit_for_bit(augment: Augmentation, box):
    """Same seed, same draws: image and keypoints equal torchvision's Compose pipeline exactly, and
    the global RNG is left where that pipeline leaves it (so the training stream is unchanged)."""
    generator = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8, generator=generator)
    xy = torch.rand(15, 2, generator=generator) * torch.tensor([140.0, 100.0]) - 10  # some outside
    keypoints = torch.cat([xy, torch.ones(15, 1)], dim=1)
    transform = KeypointImageTransform(48, True, augment, mean=(0.2,) * 3, std=(0.3,) * 3)
    reference = compose_reference(48, augment, box)
    for seed in range(40):
        torch.manual_seed(seed)
        out, kp = transform(image, keypoints, box)
        after = torch.rand(1)
        torch.manual_seed(seed)
        ref_image, ref_xy = reference(image, keypoints)
        assert torch.equal(torch.rand(1), after), seed
        assert torch.equal(out, ref_image), seed
        assert torch.equal(kp[:, :2], ref_xy), seed
        h, w = ref_image.shape[-2:]
        inside = (ref_xy >= 0).all(1) & (ref_xy[:, 0] < w) & (ref_xy[:, 1] < h)
        assert torch.equal(kp[:, 2], inside.float()), seed
