"""Per-image measurements of each method: predictions, heatmaps and their cost, deletion/insertion, part coverage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch

from proto_lightning.evaluation.progress import Progress
from proto_lightning.explainers.base import Explainer, PrototypeExplainer
from proto_lightning.metrics.faithfulness import area_under_curve, causal_curves, step_counts
from proto_lightning.metrics.part_consistency import (
    consistency,
    covered_parts,
    perturb,
    stability,
    visible_parts,
)
from proto_lightning.metrics.part_peaks import (
    defining_parts_found,
    on_part_share,
    prototype_peak_parts,
)


@torch.no_grad()
def predict(
    classifier: Callable[[torch.Tensor], torch.Tensor], loader: Iterable, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and labels (N,) of a classifier over a loader."""
    predictions, labels = [], []
    for batch in loader:
        predictions.append(classifier(batch["image"].to(device)).argmax(1).cpu())
        labels.append(torch.as_tensor(batch["label"]))
    return torch.cat(predictions).numpy(), torch.cat(labels).numpy()


def explain_timed(
    explainer: Explainer, images: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Heatmaps (N, H, W) on the CPU, and the wall-clock seconds each image's explanation took (N,)."""
    progress = Progress(f"{explainer.name} explanations", len(images))
    heatmaps, seconds = [], []
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        begin = time.perf_counter()
        maps = explainer.explain(images[chunk], targets[chunk])
        if maps.is_cuda:
            torch.cuda.synchronize(maps.device)
        elapsed = time.perf_counter() - begin
        heatmaps.append(maps.float().cpu())
        seconds += [elapsed / len(maps)] * len(maps)
        progress.advance(len(maps))
    return torch.cat(heatmaps), np.asarray(seconds)


def faithfulness_subset(num_images: int, wanted: int | None, seed: int) -> np.ndarray:
    """A seeded random subset of test images (sorted) for the per-image heatmap metrics; all when None."""
    if wanted is None or wanted >= num_images:
        return np.arange(num_images)
    return np.sort(np.random.default_rng(seed).choice(num_images, size=wanted, replace=False))


def explain_and_measure(
    explainer: Explainer, images: torch.Tensor, settings: Mapping
) -> tuple[torch.Tensor, np.ndarray, Faithfulness]:
    """Heatmaps (N, H, W) of the explained model's predicted classes, seconds per image (N,), and
    their deletion/insertion curves."""
    with torch.no_grad():
        targets = explainer.classifier(images).argmax(1)  # RISE explains the predicted class
    maps, seconds = explain_timed(explainer, images, targets, settings["batch_size"])
    return maps, seconds, faithfulness(explainer, images, maps, targets, settings["faithfulness"])


@dataclass
class Faithfulness:
    """Deletion and insertion curves (N, T) of one method's heatmaps and their AUCs (N,)."""

    deletion: torch.Tensor
    insertion: torch.Tensor

    @property
    def deletion_auc(self) -> np.ndarray:
        """Area under each deletion curve (lower is better)."""
        return area_under_curve(self.deletion).numpy()

    @property
    def insertion_auc(self) -> np.ndarray:
        """Area under each insertion curve (higher is better)."""
        return area_under_curve(self.insertion).numpy()


@torch.no_grad()
def faithfulness(
    explainer: Explainer,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: torch.Tensor,
    settings: Mapping,
) -> Faithfulness:
    """Deletion (`deletion_substrate`) and insertion (`insertion_substrate`) curves on the explained classifier."""
    heatmaps = heatmaps.to(images.device)
    T = len(step_counts(images.shape[-2] * images.shape[-1], settings["steps"]))
    progress = {
        mode: Progress(f"{explainer.name} {mode}", len(images) * T, unit="perturbed images")
        for mode in ("deletion", "insertion")
    }
    curves = {
        mode: causal_curves(
            explainer.classifier,
            images,
            heatmaps,
            targets,
            mode,
            steps=settings["steps"],
            substrate_kind=settings[f"{mode}_substrate"],
            batch_size=settings["batch_size"],
            on_batch=progress[mode].advance,
        ).cpu()
        for mode in ("deletion", "insertion")
    }
    return Faithfulness(**curves)


@dataclass
class PartCoverage:
    """For every test image and each of its true class's prototypes: the parts the region covers,
    and the true part its peak lands on."""

    covered: torch.Tensor  # (N, k, P) bool, clean images
    covered_noisy: torch.Tensor  # (N, k, P) bool, images with the reference noise
    visible: torch.Tensor  # (N, P) bool
    labels: torch.Tensor  # (N,)
    peak_parts: torch.Tensor  # (N, k) part id of each clean map's peak (-1: none), true keypoints

    def select(self, idx: np.ndarray) -> PartCoverage:
        """The coverage of some images (a bootstrap resample)."""
        return PartCoverage(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def consistency_score(coverage: PartCoverage, num_classes: int, threshold: float) -> float:
    """Mean consistency over the classes' prototypes (EvalProtoPNet's evaluate_consistency)."""
    c = consistency(
        coverage.covered, coverage.visible, coverage.labels, num_classes, threshold
    )  # (C, k)
    return float(c.float().mean())


def stability_score(coverage: PartCoverage, num_classes: int) -> float:
    """Mean stability over the prototypes of classes with an image (EvalProtoPNet's evaluate_stability)."""
    return float(
        stability(coverage.covered, coverage.covered_noisy, coverage.labels, num_classes).nanmean()
    )


def part_statistics(
    coverage: PartCoverage, num_classes: int, threshold: float, defining: list[int] | None = None
) -> dict[str, Callable[[np.ndarray], float]]:
    """Consistency, stability and true-part localisation (and, given the class-defining part ids,
    the share of them found), each as a statistic of test-image indices: what the table's
    bootstrap intervals and `compare`'s paired bootstrap resample."""
    out: dict[str, Callable[[np.ndarray], float]] = {
        "consistency": lambda idx: consistency_score(coverage.select(idx), num_classes, threshold),
        "stability": lambda idx: stability_score(coverage.select(idx), num_classes),
        "part_localisation": lambda idx: on_part_share(coverage.peak_parts[idx]),
    }
    if defining:
        out["defining_parts"] = lambda idx: defining_parts_found(
            coverage.peak_parts[idx], coverage.labels[idx], num_classes, defining
        )
    return out


def reference_keypoints_of(dataset) -> Callable[[Mapping], torch.Tensor]:
    """A batch's keypoints (B, P, 4) placed by EvalProtoPNet's arithmetic (`protocol=reference`)."""
    return lambda batch: torch.stack([dataset.reference_keypoints(int(r)) for r in batch["row"]])


@torch.no_grad()
def part_coverage(
    explainer: PrototypeExplainer,
    loader: Iterable,
    num_parts: int,
    half_size: int,
    noise_std: float,
    noise_clip: float,
    seed: int,
    device: torch.device,
    protocol: str = "scaled",
    keypoints_of: Callable[[Mapping], torch.Tensor] | None = None,
) -> PartCoverage:
    """Covered parts of each prototype of the true class on clean and noisy test images (EvalProtoPNet),
    and the true part each clean map's peak lands on (`metrics/part_peaks.py`).

    `keypoints_of(batch)` gives a batch's keypoints (B, P, 4), by default `batch["keypoints"]`;
    `protocol` is `part_consistency`'s (reference | scaled)."""
    images = (
        len(loader.dataset) if hasattr(loader, "dataset") else sum(len(b["label"]) for b in loader)
    )
    progress = Progress(f"{explainer.name} part coverage", images)
    covered, noisy, visible, labels, peak_parts = [], [], [], [], []
    for batch in loader:
        images, classes = batch["image"].to(device), torch.as_tensor(batch["label"]).to(device)
        keypoints = (batch["keypoints"] if keypoints_of is None else keypoints_of(batch)).to(device)
        size = tuple(images.shape[-2:])
        seeds = [
            seed * 1_000_003 + int(row) for row in batch["row"]
        ]  # per image: any batching agrees
        clean = explainer.prototype_maps(images, classes)  # (B, k, h, w)
        noisy_maps = explainer.prototype_maps(
            perturb(images, noise_std, noise_clip, seeds), classes
        )
        covered.append(covered_parts(clean, keypoints, num_parts, size, half_size, protocol).cpu())
        noisy.append(
            covered_parts(noisy_maps, keypoints, num_parts, size, half_size, protocol).cpu()
        )
        true_keypoints = batch["keypoints"].to(device)  # where the parts are in the input image
        peak_parts.append(prototype_peak_parts(clean, true_keypoints, size).cpu())
        visible.append(visible_parts(keypoints, num_parts).cpu())
        labels.append(classes.cpu())
        progress.advance(len(classes))
    return PartCoverage(
        torch.cat(covered),
        torch.cat(noisy),
        torch.cat(visible),
        torch.cat(labels),
        torch.cat(peak_parts),
    )
