"""Where a feature-map location lies in the input: receptive-field box and high-activation box.

Both boxes are (y0, y1, x0, x1) in input pixels, end-exclusive, as ProtoPNet records them
(cfchen-duke/ProtoPNet push.py: `proto_rf_boxes`, `proto_bound_boxes`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from proto_lightning.data.loaders import image_of
from proto_lightning.prototypes.projection import Projection


def receptive_field_boxes(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    image_size: int,
    locations: np.ndarray,
    device: torch.device | str = "cpu",
    probes: int = 2,
    seed: int = 0,
    scales: tuple[float, ...] = (1.0, 1.0e3),
) -> np.ndarray:
    """Receptive-field box of each (h, w) location: the input pixels its features depend on.

    Measured, not derived from layer arithmetic, so every backbone family (residual branches,
    dense blocks) is handled alike: the support of d sum_d F[d, h, w] / d x over a few random inputs.
    ProtoPNet computes the same box analytically per architecture (receptive_field.py). The probe
    is drawn on the CPU (the same numbers on every device) and runs on `device`, the network's.
    A trained network's biases can switch off every ReLU at a location for unit-scale noise (a
    zero gradient there); the probes are also drawn at a large scale, where the input outweighs the
    biases and about half the units are on, and the support is the union over all probes.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(probes, 3, image_size, image_size, generator=generator)
    probe = torch.cat([noise * scale for scale in scales])  # (probes x scales, 3, S, S)
    x = probe.to(device).requires_grad_(True)
    boxes = np.zeros((len(locations), 4), dtype=np.int64)
    cache: dict[tuple[int, int], np.ndarray] = {}
    with torch.enable_grad():
        fmap = features_fn(x)  # (probes x scales, D, H, W)
        for n, (h, w) in enumerate(np.asarray(locations).tolist()):
            if (h, w) not in cache:
                (grad,) = torch.autograd.grad(fmap[:, :, h, w].sum(), x, retain_graph=True)
                support = (grad.abs().sum((0, 1)) > 0).cpu()  # (H0, W0)
                if not support.any():
                    raise ValueError(
                        f"feature location {(h, w)} depends on no input pixel for any probe; "
                        "its receptive field cannot be measured"
                    )
                ys, xs = torch.nonzero(support, as_tuple=True)
                cache[h, w] = np.array([ys.min(), ys.max() + 1, xs.min(), xs.max() + 1])
            boxes[n] = cache[h, w]
    return boxes


def high_activation_box(
    activation: torch.Tensor, image_size: int, percentile: float = 95.0
) -> np.ndarray:
    """ProtoPNet's `find_high_activation_crop`: upsample (bicubic) the (H, W) activation to the image,
    keep pixels at or above the percentile, return their bounding box (y0, y1, x0, x1)."""
    up = F.interpolate(
        activation[None, None].float(),
        size=(image_size, image_size),
        mode="bicubic",
        align_corners=False,
    )[0, 0]
    threshold = torch.quantile(up.flatten(), percentile / 100.0)
    ys, xs = torch.nonzero(up >= threshold, as_tuple=True)
    return np.array([int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1])


@torch.no_grad()
def projected_boxes(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    activation_maps: Callable[[torch.Tensor], torch.Tensor],
    projection: Projection,
    push_set: Dataset,
    image_size: int,
    percentile: float,
    device: torch.device | str,
    queries: np.ndarray | None = None,
    images_per_pass: int = 32,
) -> dict[str, np.ndarray]:
    """Receptive-field and high-activation boxes (Q, 4) of every prototype on the push image it was
    projected onto, in input pixels, as ProtoPNet's push records them (`proto_rf_boxes`,
    `proto_bound_boxes`). `activation_maps(images (B, 3, S, S))` gives every prototype's map
    (B, Q, H, W) on those images; the winning images go through it `images_per_pass` at a time
    (`data.loaders.image_of` reads the image of a row). With `queries`, only those prototypes'
    boxes, in that order (a DDP rank's share).
    """
    queries = np.arange(len(projection.rows)) if queries is None else np.asarray(queries)
    rf = receptive_field_boxes(features_fn, image_size, projection.locations[queries], device)
    high = np.zeros_like(rf)
    rows = np.unique(projection.rows[queries])
    for start in range(0, len(rows), images_per_pass):
        chunk = rows[start : start + images_per_pass]
        images = torch.stack([image_of(push_set, int(row)) for row in chunk]).to(device)
        maps = activation_maps(images)  # (B, Q, H, W)
        for b, row in enumerate(chunk):
            for n in np.flatnonzero(projection.rows[queries] == row):
                high[n] = high_activation_box(maps[b, queries[n]].cpu(), image_size, percentile)
    return {"rf_boxes": rf, "high_activation_boxes": high}


def posthoc_boxes(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    projection: Projection,
    prototypes: torch.Tensor,
    push_set: Dataset,
    image_size: int,
    percentile: float,
    device: torch.device | str,
    queries: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """`projected_boxes` of post-hoc prototypes (C, k, D), whose activation map is f_j . p~_i."""
    flat = prototypes.reshape(-1, prototypes.shape[-1]).to(device)  # (Q, D)

    def heatmaps(images: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bdhw,qd->bqhw", features_fn(images), flat)  # (B, Q, H, W)

    return projected_boxes(
        features_fn, heatmaps, projection, push_set, image_size, percentile, device, queries
    )
