"""Consistency and stability of part-prototypes, with keypoint part annotations.

Follows Huang et al., "Evaluation and Improvement of Interpretability for Self-Explainable
Part-Prototype Networks" (CVPR 2023), and their code (hqhQAQ/EvalProtoPNet,
util/eval_interpretability.py), exactly:

- only a prototype's own class's test images count (the prototypes of each image's true class);
- a prototype's activation map is upsampled to the input (bicubic) and its region is the box of
  half-size h around the first maximum (row-major), clipped to the image: rows
  [max(0, y - h), min(S, y + h)], columns likewise, bounds inclusive;
- a visible part keypoint, at integer (truncated) input coordinates, is covered when it lies in
  the region; an image's part mask marks its visible parts;
- consistency: for each part, the share of the class's images on which the region covers it,
  among the images where the part is visible (a part visible nowhere divides by one); a prototype
  is consistent when some part reaches the threshold (0.8); the score is the share of consistent
  prototypes;
- stability: the same regions on the images with Gaussian noise (std 0.2, clipped to +-0.25, in
  the normalised input space); a prototype's stability is the share of its class's images whose
  covered-part set is unchanged; the score is the mean over prototypes.

Two protocols (`PROTOCOLS`) differ in three places:
- `reference` (EvalProtoPNet's numbers): upsampling by OpenCV's `cv2.resize(..., INTER_CUBIC)`, whose
  last float bit decides ties between equal maxima, h = 36 pixels at any input size, and keypoints
  placed by the reference's integer arithmetic with every annotated part kept, inside the crop or
  not (`data.transforms.reference_keypoints`);
- `scaled` (ours): torch's bicubic upsampling, h = 36 x S / 224, and keypoints moved by the test
  transform, those leaving the image marked invisible.

Scores are fractions in [0, 1] here (the reference multiplies by 100).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from proto_lightning.errors import ConfigValueError

REFERENCE_HALF_SIZE = 36  # pixels, at the reference's 224-pixel input
REFERENCE_IMAGE_SIZE = 224
PROTOCOLS = ("reference", "scaled")
PROTOCOL_CHOICES = ("auto", *PROTOCOLS)  # `evaluation.parts.protocol`
PART_METRICS = ("consistency", "stability")  # the metrics whose numbers depend on the protocol


def part_protocol(protocol: str, image_size: int) -> str:
    """The protocol a run measures with: `auto` is `reference` at the reference's 224 px input and
    `scaled` at any other; `reference` elsewhere is refused, since its fixed 36 px half-size covers
    a larger share of a smaller image (a 72 px box in a 96 px image) and inflates the scores."""
    if protocol not in PROTOCOL_CHOICES:
        raise ConfigValueError(
            f"evaluation.parts.protocol={protocol!r}: choose one of {', '.join(PROTOCOL_CHOICES)}"
        )
    if protocol == "auto":
        return "reference" if image_size == REFERENCE_IMAGE_SIZE else "scaled"
    if protocol == "reference" and image_size != REFERENCE_IMAGE_SIZE:
        raise ConfigValueError(
            f"evaluation.parts.protocol=reference keeps EvalProtoPNet's {REFERENCE_HALF_SIZE} px "
            f"half-size, made for {REFERENCE_IMAGE_SIZE} px inputs; at data.image_size={image_size} "
            "it would cover most of the image. Use protocol=scaled (or auto)."
        )
    return protocol


def metric_label(name: str, protocol: str) -> str:
    """A metric's key: a part metric measured under another protocol than the reference's carries
    it (`consistency@scaled`), so the two never share a key in a log or a table."""
    return f"{name}@{protocol}" if name in PART_METRICS and protocol != "reference" else name


def region_half_size(
    image_size: int, half_size: int | None = None, protocol: str = "scaled"
) -> int:
    """The region's half-size: given, else the reference's 36 px (`reference`) or 36 px at 224 px
    scaled to `image_size` (`scaled`)."""
    if half_size is not None:
        return int(half_size)
    if protocol == "reference":
        return REFERENCE_HALF_SIZE
    return round(REFERENCE_HALF_SIZE * image_size / REFERENCE_IMAGE_SIZE)


def peak_pixels(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Activation maps (N, k, h, w) -> (N, k, 2) input-pixel (y, x) of each upsampled map's first maximum."""
    N, k = activations.shape[:2]
    up = F.interpolate(activations.float(), size=size, mode="bicubic", align_corners=False)
    flat = up.flatten(2).argmax(dim=2)  # (N, k): first maximum in row-major order
    return torch.stack([flat // size[1], flat % size[1]], dim=-1)


def reference_peak_pixels(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """As `peak_pixels`, upsampled as EvalProtoPNet does: each prototype's map alone through
    `cv2.resize(map, (S, S), INTER_CUBIC)`, and the first of `np.where(up == up.max())`.

    One single-channel resize per map, as the reference runs it: OpenCV's multi-channel cubic
    resize rounds differently (by ~1e-7), and on maps with ties that last bit picks the peak.
    """
    maps = activations.detach().float().cpu().numpy()  # (N, k, h, w)
    N, k = activations.shape[:2]
    flat = np.empty((N, k), dtype=np.int64)
    for n in range(N):
        for i in range(k):
            up = cv2.resize(maps[n, i], (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
            flat[n, i] = up.argmax()  # numpy's argmax: the first maximum, as np.where's first hit
    flat_t = torch.from_numpy(flat).to(activations.device)
    return torch.stack([flat_t // size[1], flat_t % size[1]], dim=-1)


def covered_parts(
    activations: torch.Tensor,
    keypoints: torch.Tensor,
    num_parts: int,
    size: tuple[int, int],
    half_size: int,
    protocol: str = "scaled",
) -> torch.Tensor:
    """Which parts each prototype's region covers on each image (N, k, P) bool.

    activations (N, k, h, w); keypoints (N, P', 4) rows of (1-based part id, x, y, visible);
    `protocol` chooses the upsampling (module docstring).
    """
    peak_fn = reference_peak_pixels if protocol == "reference" else peak_pixels
    peaks = peak_fn(activations, size)  # (N, k, 2)
    y0 = (peaks[..., 0] - half_size).clamp(min=0)[..., None]  # (N, k, 1)
    y1 = (peaks[..., 0] + half_size).clamp(max=size[0])[..., None]
    x0 = (peaks[..., 1] - half_size).clamp(min=0)[..., None]
    x1 = (peaks[..., 1] + half_size).clamp(max=size[1])[..., None]
    px = keypoints[:, None, :, 1].floor()  # (N, 1, P')
    py = keypoints[:, None, :, 2].floor()
    visible = keypoints[:, None, :, 3] > 0
    inside = (py >= y0) & (py <= y1) & (px >= x0) & (px <= x1) & visible  # (N, k, P')
    part = (keypoints[:, :, 0].long() - 1).clamp(0, num_parts - 1)  # (N, P')
    covered = torch.zeros(*inside.shape[:2], num_parts, dtype=torch.bool, device=inside.device)
    return covered.scatter_reduce_(
        2, part[:, None, :].expand_as(inside), inside, reduce="amax", include_self=True
    )


def visible_parts(keypoints: torch.Tensor, num_parts: int) -> torch.Tensor:
    """Part mask (N, P) bool: the parts annotated as visible on each image."""
    part = (keypoints[:, :, 0].long() - 1).clamp(0, num_parts - 1)
    mask = torch.zeros(len(keypoints), num_parts, dtype=torch.bool, device=keypoints.device)
    return mask.scatter_reduce_(1, part, keypoints[:, :, 3] > 0, reduce="amax", include_self=True)


def part_frequencies(
    covered: torch.Tensor, visible: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per class and prototype, each part's covered share among the class's images showing it (C, k, P)."""
    hits = torch.zeros(num_classes, *covered.shape[1:], device=covered.device)
    hits.index_add_(0, labels, covered.float())  # (C, k, P)
    shown = torch.zeros(num_classes, visible.shape[1], device=covered.device)
    shown.index_add_(0, labels, visible.float())  # (C, P)
    return hits / shown.clamp(min=1)[:, None, :]


def consistency(
    covered: torch.Tensor,
    visible: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    threshold: float = 0.8,
) -> torch.Tensor:
    """Per prototype: does some part's covered share reach the threshold (EvalProtoPNet's
    `evaluate_consistency`).

    Args:
        covered: (N, k, P) bool, the parts each of the image's own-class prototypes' regions cover.
        visible: (N, P) bool, the parts visible in each image.
        labels: (N,) each image's class.
        num_classes: C.
        threshold: the share of a class's images on which a part must be covered (0.8).

    Returns:
        (C, k) bool; the metric is its mean.

    Example:
        >>> covered = torch.ones(2, 1, 1, dtype=torch.bool)
        >>> consistency(covered, torch.ones(2, 1, dtype=torch.bool), torch.tensor([0, 0]), 1).tolist()
        [[True]]
    """
    return (part_frequencies(covered, visible, labels, num_classes) >= threshold).any(dim=-1)


def stability(
    covered: torch.Tensor, covered_noisy: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per prototype: the share of its class's images whose covered parts are unchanged by noise
    (EvalProtoPNet's `evaluate_stability`).

    Args:
        covered: (N, k, P) bool, covered parts on the clean images.
        covered_noisy: (N, k, P) bool, on the same images with the reference noise (`perturb`).
        labels: (N,) each image's class.
        num_classes: C.

    Returns:
        (C, k) float; NaN for a class without images. The metric is its mean over the rest.

    Example:
        >>> clean = torch.tensor([[[True]], [[True]]])
        >>> noisy = torch.tensor([[[True]], [[False]]])
        >>> stability(clean, noisy, torch.tensor([0, 0]), 1).tolist()
        [[0.5]]
    """
    same = (covered == covered_noisy).all(dim=-1).float()  # (N, k)
    kept = torch.zeros(num_classes, same.shape[1], device=same.device).index_add_(0, labels, same)
    count = torch.bincount(labels, minlength=num_classes).float()  # (C,)
    return kept / count[:, None]


def perturb(images: torch.Tensor, std: float, eps: float, seeds: Sequence[int]) -> torch.Tensor:
    """The reference's imperceptible noise: Gaussian of `std`, clipped to +-eps, added to normalised
    images (B, 3, H, W); image b's noise comes from its own generator seeded with seeds[b], so it does
    not depend on batching or on how images are split over ranks."""
    noise = torch.stack(
        [
            torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ]
    )
    return images + (noise * std).clamp(-eps, eps).to(images.device)
