"""Which annotated part a heatmap's peak lands on: a first look at part-prototype interpretability.

For each image, the peak of a prototype's upsampled heatmap is assigned to the nearest visible
part keypoint when that keypoint lies within `radius` pixels (default: one feature-map cell),
otherwise to no part (-1). A prototype's modal part and the share of images whose peak lands on it
say whether it is a part-prototype. The evaluation stage's consistency and stability metrics
(Huang et al., CVPR 2023) are the rigorous version of this question.
"""

from __future__ import annotations

import torch


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
