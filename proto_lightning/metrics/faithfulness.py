"""Deletion and insertion: how fast the class probability falls (rises) as pixels go (come) in a heatmap's order.

Follows Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models"
(BMVC 2018), section 4.1, and their `CausalMetric` (github.com/eclique/RISE, evaluation.py):

- pixels are ranked by the heatmap, highest first; at step t = 0..n the first min(t * s, HW) of
  them are taken from the `finish` image and the rest from the `start` image, with s pixels per step
  (n = ceil(HW / s));
- the order is RISE's own, `np.flip(np.argsort(map))`: numpy's default (quicksort) ascending
  argsort, reversed. On equal values that sort is not stable, so ties come in the order numpy
  leaves them, reversed, exactly as in the reference; on piecewise-constant maps (LIME's) that
  order decides the curve, so it is numpy's sort that ranks, on the CPU;
- deletion starts from the image and finishes at the substrate (RISE: zeros); insertion starts
  from the substrate and finishes at the image. RISE's insertion substrate (`blur`) is
  `conv2d(x, gkern(11, 5), padding=5)`: its kernel is scipy's `gaussian_filter` (sigma 5, reflect
  mode, truncated at 4 sigma) of a centred delta in an 11 x 11 array, which the reflections make
  nearly flat (centre 0.0088, corner 0.0077), and the convolution pads with zeros. `gaussian` is a
  torchvision Gaussian blur (11 taps, sigma 5, reflect padding), a named variant;
- the score at each step is the softmax probability of the target class (the model's prediction
  on the original image); the AUC is the trapezoidal area over t / n in [0, 1].

Lower deletion and higher insertion AUC are better. `causal_curves` evaluates every step of several
images in one forward batch; `causal_curve_loop` is the reference's one-image, one-step-at-a-time
loop, kept as the ground truth the batched version is tested and benchmarked against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from proto_lightning.errors import ConfigValueError

Model = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) -> logits (B, C)
SUBSTRATES = ("zero", "blur", "gaussian", "mean")
MODES = ("deletion", "insertion")
RISE_KERNEL_SIZE, RISE_KERNEL_SIGMA = 11, 5.0


@functools.cache
def rise_kernel(size: int = RISE_KERNEL_SIZE, sigma: float = RISE_KERNEL_SIGMA) -> torch.Tensor:
    """RISE's `gkern(size, sigma)` for one channel (size, size): scipy's `gaussian_filter` of a delta."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return torch.from_numpy(gaussian_filter(delta, sigma).astype(np.float32))


def rise_blur(images: torch.Tensor) -> torch.Tensor:
    """Each channel convolved with `rise_kernel`, zero-padded to the same size (B, 3, H, W)."""
    kernel = rise_kernel().to(images)
    weight = kernel.expand(images.shape[1], 1, *kernel.shape)  # (3, 1, k, k): channels apart
    return F.conv2d(images, weight, padding=kernel.shape[-1] // 2, groups=images.shape[1])


def substrate(images: torch.Tensor, kind: str) -> torch.Tensor:
    """What removed pixels become (B, 3, H, W): zeros, RISE's blur, torchvision's Gaussian blur or the image mean."""
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "blur":
        return rise_blur(images)
    if kind == "gaussian":
        return TF.gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    raise ConfigValueError(
        f"unknown substrate {kind!r} (evaluation.faithfulness.deletion_substrate / "
        f"insertion_substrate); choose one of {SUBSTRATES}"
    )


def step_counts(num_pixels: int, steps: int) -> torch.Tensor:
    """Pixels replaced at each step t = 0..n (n + 1,), with ceil(HW / steps) pixels per step as RISE."""
    per_step = math.ceil(num_pixels / steps)
    n = math.ceil(num_pixels / per_step)
    return (torch.arange(n + 1) * per_step).clamp(max=num_pixels)


def salient_order(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmaps (B, H, W) -> pixel indices (B, H*W), most salient first, in RISE's order: numpy's
    default argsort of each map (in float64), reversed (module docstring)."""
    maps = heatmaps.detach().flatten(1).double().cpu().numpy()  # (B, HW)
    order = np.flip(np.argsort(maps, axis=1), axis=1).copy()
    return torch.from_numpy(order).to(heatmaps.device)


def pixel_ranks(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmaps (B, H, W) -> rank of every pixel (B, H*W), 0 for the most salient (`salient_order`)."""
    order = salient_order(heatmaps)  # (B, HW)
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def _endpoints(
    images: torch.Tensor, mode: str, substrate_kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    base = substrate(images, substrate_kind)
    return (images, base) if mode == "deletion" else (base, images)


@torch.inference_mode()
def causal_curves(
    model: Model,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: torch.Tensor,
    mode: str,
    steps: int = 100,
    substrate_kind: str = "zero",
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Deletion or insertion curves of images under heatmaps, batched over images and steps
    (Petsiuk et al. 2018, as eclique/RISE's `CausalMetric` computes them).

    Args:
        model: normalised images (B, 3, H, W) -> logits (B, C); the curve is the softmax
            probability of `targets`.
        images: normalised images (B, 3, H, W).
        heatmaps: (B, H, W); pixels are removed (inserted) from the highest value down.
        targets: the class per image (B,), RISE's rule: the model's prediction on the clean image.
        mode: `deletion` (from the image to the substrate) or `insertion` (the other way).
        steps: pixels per step are H W / steps (RISE: 224 at 224 x 224).
        substrate_kind: `zero`, `blur` (RISE's insertion substrate), `gaussian` or `mean`.
        batch_size: perturbed images per forward pass.
        on_batch: told after every forward pass how many perturbed images it ran (progress).

    Returns:
        Curves (B, n + 1), n the number of steps; `area_under_curve` gives their AUCs.

    Example:
        >>> # curves = causal_curves(net, x, maps, net(x).argmax(1), "deletion", steps=25)
        >>> # area_under_curve(curves)  # (B,), lower is better for deletion
    """
    B, _, H, W = images.shape
    start, finish = _endpoints(images, mode, substrate_kind)
    ranks = pixel_ranks(heatmaps)  # (B, HW)
    counts = step_counts(H * W, steps).to(images.device)  # (T,)
    T = len(counts)
    scores = torch.empty(B * T, device=images.device)
    for first in range(0, B * T, batch_size):
        pair = torch.arange(first, min(first + batch_size, B * T), device=images.device)  # (b,)
        image, step = pair // T, pair % T
        replaced = (ranks[image] < counts[step, None]).view(-1, 1, H, W)  # (b, 1, H, W)
        perturbed = torch.where(replaced, finish[image], start[image])  # (b, 3, H, W)
        probabilities = model(perturbed).softmax(dim=1)  # (b, C)
        scores[pair] = probabilities.gather(1, targets[image, None]).squeeze(1)
        if on_batch is not None:
            on_batch(len(pair))
    return scores.view(B, T)


@torch.inference_mode()
def causal_curve_loop(
    model: Model,
    image: torch.Tensor,
    heatmap: torch.Tensor,
    target: int,
    mode: str,
    steps: int = 100,
    substrate_kind: str = "zero",
) -> torch.Tensor:
    """The reference loop for one image (3, H, W): replace s pixels, run the model on one image, repeat (n + 1,)."""
    _, H, W = image.shape
    start, finish = (x[0] for x in _endpoints(image[None], mode, substrate_kind))
    current = start.clone().view(3, -1)  # (3, HW)
    finish = finish.reshape(3, -1)
    order = salient_order(heatmap[None])[0]  # (HW,)
    counts = step_counts(H * W, steps)
    scores = []
    for t in range(len(counts)):
        probabilities = model(current.view(1, 3, H, W)).softmax(dim=1)
        scores.append(float(probabilities[0, target]))
        if t + 1 < len(counts):
            chosen = order[counts[t] : counts[t + 1]]
            current[:, chosen] = finish[:, chosen]
    return torch.tensor(scores)


def area_under_curve(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoidal AUC of curves sampled evenly on [0, 1] (RISE's `auc`).

    Args:
        curves: (B, n + 1), e.g. from `causal_curves`.

    Returns:
        (B,): per curve, (sum - first / 2 - last / 2) / n.

    Example:
        >>> area_under_curve(torch.tensor([[1.0, 0.5, 0.0]])).tolist()
        [0.5]
    """
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)
