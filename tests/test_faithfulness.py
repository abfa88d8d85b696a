"""Deletion / insertion (Petsiuk et al. 2018): a curve worked by hand, a known-answer heatmap, batched == an independent RISE loop."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate, gaussian_filter
from torch import nn

from proto_lightning.metrics.faithfulness import (
    area_under_curve,
    causal_curve_loop,
    causal_curves,
    step_counts,
    substrate,
)


class RegionModel(nn.Module):
    """logit_0 = weighted sum of channel 0 over a pixel mask, logit_1 = 0: it uses exactly those pixels."""

    def __init__(self, mask: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.mask, self.bias = mask.float(), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.mask).flatten(1).sum(1) + self.bias
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_deletion_curve_worked_by_hand():
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    heatmap = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # delete (0,0), (0,1), (1,0), (1,1) in turn
    model = RegionModel(torch.ones(2, 2))
    curve = causal_curves(model, image, heatmap, torch.tensor([0]), "deletion", steps=4)
    # softmax([s, 0])[0] = sigmoid(s), s = 10, 9, 7, 4, 0 as pixels go to zero
    expected = [sigmoid(s) for s in (10, 9, 7, 4, 0)]
    assert torch.allclose(curve[0], torch.tensor(expected), atol=1e-6)
    auc = 0.25 * (sum(expected) - expected[0] / 2 - expected[-1] / 2)
    assert area_under_curve(curve).item() == pytest.approx(auc, abs=1e-6)
    # insertion from zeros: the reverse path, s = 0, 1, 3, 6, 10
    insertion = causal_curves(model, image, heatmap, torch.tensor([0]), "insertion", 4, "zero")
    assert torch.allclose(insertion[0], torch.tensor([sigmoid(s) for s in (0, 1, 3, 6, 10)]))


def test_step_counts_follow_rise():
    assert step_counts(10, 4).tolist() == [0, 3, 6, 9, 10]  # ceil(10 / 4) = 3 pixels per step
    assert step_counts(224 * 224, 224).tolist()[:3] == [0, 224, 448]


@pytest.mark.parametrize("insertion_substrate", ["zero", "blur", "mean"])
def test_heatmap_on_the_used_pixels_beats_its_reverse(insertion_substrate):
    torch.manual_seed(0)
    H = W = 16
    used = torch.zeros(H, W, dtype=torch.bool)
    used[3:8, 9:14] = True  # the model reads only these pixels
    model = RegionModel(used, bias=-40.0)  # saturates only when the region is intact
    images = torch.rand(4, 3, H, W)
    images[:, 0] = 0.0
    images[:, 0][:, used] = 2.0 + 0.1 * torch.rand(4, int(used.sum()))
    truth = used.float()[None].expand(4, H, W) + 0.01 * torch.rand(4, H, W)
    targets = torch.zeros(4, dtype=torch.long)

    def aucs(heatmaps, mode, kind):
        return area_under_curve(causal_curves(model, images, heatmaps, targets, mode, 32, kind))

    assert (aucs(truth, "deletion", "zero") < aucs(-truth, "deletion", "zero")).all()
    assert (
        aucs(truth, "insertion", insertion_substrate)
        > aucs(-truth, "insertion", insertion_substrate)
    ).all()


def rise_gkern(klen: int, nsig: float) -> np.ndarray:
    """RISE's `gkern` (eclique/RISE, evaluation.py), transcribed: scipy's gaussian_filter of a
    centred delta in a klen x klen array (one channel)."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    return gaussian_filter(delta, nsig)


def rise_reference(model, image, heatmap, target: int, mode: str, steps: int, kind: str):
    """RISE's CausalMetric.single_run (eclique/RISE, evaluation.py), transcribed in numpy and scipy,
    sharing nothing with the code under test: `np.flip(np.argsort(...))` for the order (numpy's
    default sort, ties included), s = ceil(HW / steps) pixels a step, one forward pass per step; the
    blur substrate is `conv2d(x, gkern(11, 5), padding=5)`, a zero-padded correlation per channel."""
    x = image.double().numpy()  # (3, H, W)
    if kind == "zero":
        base = np.zeros_like(x)
    elif kind == "mean":
        base = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    else:
        kernel = rise_gkern(11, 5)
        base = np.stack([correlate(channel, kernel, mode="constant", cval=0.0) for channel in x])
    start, finish = (x, base) if mode == "deletion" else (base, x)
    current, finish = start.reshape(3, -1).copy(), finish.reshape(3, -1)
    per_step = -(-x[0].size // steps)
    order = np.flip(np.argsort(heatmap.double().numpy().reshape(-1)))
    scores = []
    for t in range(-(-x[0].size // per_step) + 1):
        image_now = torch.from_numpy(current.reshape(x.shape)).float()[None]
        scores.append(float(model(image_now).softmax(dim=1)[0, target]))
        chosen = order[t * per_step : (t + 1) * per_step]
        current[:, chosen] = finish[:, chosen]
    return torch.tensor(scores)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("kind", ["zero", "blur", "mean"])
def test_batched_curves_equal_an_independent_rise_loop(mode, kind):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()
    images, heatmaps = torch.randn(3, 3, 12, 12), torch.rand(3, 12, 12)
    heatmaps[0, :4] = 0.5  # ties: in numpy's order, as RISE ranks them
    targets = torch.tensor([0, 3, 4])
    batched = causal_curves(model, images, heatmaps, targets, mode, 20, kind, batch_size=7)
    with torch.no_grad():
        for b in range(3):
            reference = rise_reference(
                model, images[b], heatmaps[b], int(targets[b]), mode, 20, kind
            )
            # ceil(144 / 20) = 8 pixels a step, ceil(144 / 8) = 18 steps: 19 points
            assert batched.shape[1] == len(reference) == 19
            assert torch.allclose(batched[b], reference, atol=1e-5)
            # the benchmarks' one-image loop is the same curve
            loop = causal_curve_loop(model, images[b], heatmaps[b], int(targets[b]), mode, 20, kind)
            assert torch.allclose(loop, reference, atol=1e-5)


def test_substrates_are_the_rise_ones():
    images = torch.rand(2, 3, 20, 20)
    assert substrate(images, "zero").abs().sum() == 0
    assert torch.allclose(substrate(images, "mean")[:, :, 5, 7], images.mean(dim=(2, 3)))
    kernel = rise_gkern(11, 5)  # nearly flat: the reflections fold the tails back in
    assert abs(kernel[5, 5] - 0.0088) < 5e-5 and abs(kernel[0, 0] - 0.0077) < 5e-5
    blurred = [
        [correlate(channel, kernel, mode="constant", cval=0.0) for channel in image]
        for image in images.double().numpy()
    ]  # RISE: conv2d(x, gkern(11, 5), padding=5), zeros outside the image
    assert np.allclose(substrate(images, "blur").numpy(), np.array(blurred), atol=1e-6)
    tv = gaussian_filter(images.double().numpy(), sigma=(0, 0, 5, 5), truncate=1.0, mode="mirror")
    assert np.allclose(substrate(images, "gaussian").numpy(), tv, atol=1e-5)  # the named variant
    with pytest.raises(ValueError, match="unknown substrate"):
        substrate(images, "noise")


def test_curves_report_their_progress_once_per_forward_pass():
    """`on_batch` hears every perturbed image once: B images x (steps + 1) points, in batches."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    images, heatmaps = torch.rand(3, 3, 8, 8), torch.rand(3, 8, 8)
    told: list[int] = []
    causal_curves(
        model,
        images,
        heatmaps,
        torch.zeros(3, dtype=torch.long),
        "deletion",
        steps=4,
        batch_size=4,
        on_batch=told.append,
    )
    points = len(step_counts(64, 4))
    assert sum(told) == 3 * points and max(told) <= 4
