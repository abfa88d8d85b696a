"""Which annotated part a heatmap's peak lands on: true-part localisation of part-prototypes.

For each image, the peak of a prototype's (bilinearly upsampled) heatmap is assigned to the nearest
visible part keypoint when that keypoint lies within `radius` pixels (one feature-map cell),
otherwise to no part (-1). On data whose true parts are known (the generated birds: keypoints are
where the parts were drawn, and the classes differ only in some of them), two shares follow:
  - on-part share: of the (prototype, own-class test image) pairs, those whose peak is on a part;
  - defining parts found: of the (class, class-defining part) pairs, those for which some prototype
    of the class peaks on that part in at least `threshold` of the class's test images.
Consistency and stability (Huang et al., ICCV 2023) ask the same question with regions, not peaks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def peak_locations(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmaps (N, H, W) -> (N, 2) pixel coordinates (x, y) of each maximum, at pixel centres."""
    N, H, W = heatmaps.shape
    flat = heatmaps.reshape(N, -1).argmax(1)
    return torch.stack([flat % W, flat // W], dim=1).float() + 0.5


def assign_parts(peaks: torch.Tensor, keypoints: torch.Tensor, radius: float) -> torch.Tensor:
    """Peaks (N, 2) and keypoints (N, P, 4: part id, x, y, visible) -> part id hit (N,), -1 for none."""
    distance = (keypoints[:, :, 1:3] - peaks[:, None, :]).norm(dim=-1)  # (N, P)
    distance = torch.where(
        keypoints[:, :, 3] > 0, distance, torch.full_like(distance, float("inf"))
    )
    nearest = distance.argmin(1)  # (N,)
    hit = distance.gather(1, nearest[:, None]).squeeze(1) <= radius
    part = keypoints[:, :, 0].gather(1, nearest[:, None]).squeeze(1).long()
    return torch.where(hit, part, torch.full_like(part, -1))


def modal_part_share(parts: torch.Tensor) -> tuple[int, float]:
    """Most frequent part id among hits (-1 if none) and the share of all images that hit it."""
    hits = parts[parts >= 0]
    if len(hits) == 0:
        return -1, 0.0
    values, counts = hits.unique(return_counts=True)
    best = counts.argmax()
    return int(values[best]), float(counts[best]) / len(parts)


def prototype_peak_parts(
    maps: torch.Tensor, keypoints: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Maps (B, k, h, w) of each image's own-class prototypes and keypoints (B, P, 4) -> the part id
    (B, k) each peak lands on (-1: none), peaks of the maps upsampled bilinearly to `size` (H, W)
    and a radius of one feature cell (W / w pixels)."""
    B, k, h, w = maps.shape
    upsampled = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)
    peaks = peak_locations(upsampled.reshape(B * k, *size))  # (B k, 2)
    per_map = keypoints.float().repeat_interleave(k, dim=0)  # (B k, P, 4)
    return assign_parts(peaks, per_map, size[1] / w).reshape(B, k)


def on_part_share(parts: torch.Tensor) -> float:
    """Share of (image, prototype) pairs (N, k) whose peak lands on a visible true part."""
    return float((parts >= 0).float().mean())


def defining_parts_found(
    parts: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    defining: Sequence[int],
    threshold: float = 0.8,
) -> float:
    """Share of (class, defining part) pairs some prototype of the class peaks on in >= `threshold`
    of the class's images; parts (N, k) part ids of each image's own-class prototypes, labels (N,),
    `defining` part ids; classes without images are left out."""
    ids = torch.as_tensor(list(defining), device=parts.device)  # (Q,)
    on = (parts[:, :, None] == ids).float()  # (N, k, Q)
    count = torch.bincount(labels, minlength=num_classes).float()  # (C,)
    hits = torch.zeros(num_classes, *on.shape[1:], device=parts.device).index_add_(0, labels, on)
    share = hits / count.clamp_min(1)[:, None, None]  # (C, k, Q)
    found = (share >= threshold).any(dim=1)  # (C, Q)
    return float(found[count > 0].float().mean())
