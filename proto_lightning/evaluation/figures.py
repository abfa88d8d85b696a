"""Evaluation figures: side-by-side explanations of one image, and mean deletion/insertion curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from proto_lightning.evaluation.scores import Faithfulness  # noqa: E402


@dataclass
class PrototypeTerm:
    """One "this looks like that" term: where on the image, which training patch, how much."""

    heatmap: np.ndarray | None  # (H, W) on the explained image, or None when a box says where
    box: tuple[int, int, int, int] | None  # (y0, y1, x0, x1) on the explained image
    patch: np.ndarray | None  # (h, w, 3) uint8 nearest training patch
    caption: str


def _box(ax, box: tuple[int, int, int, int], colour: str) -> None:
    y0, y1, x0, x1 = box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=colour, lw=2))


def _show(
    ax, image: np.ndarray, heatmap: np.ndarray | None = None, title: str = "", size: float = 7
) -> None:
    ax.imshow(image)
    if heatmap is not None:
        ax.imshow(heatmap, cmap="jet", alpha=0.45)
    ax.set_title(title, fontsize=size)
    ax.axis("off")


def explanation_figure(
    path: Path,
    image: np.ndarray,
    title: str,
    heatmaps: dict[str, np.ndarray],
    protopnet: list[PrototypeTerm],
    posthoc: list[PrototypeTerm],
    explained: dict[str, str],
) -> Path:
    """One PNG: the input and each heatmap method with the class it explains (`explained`, by
    method name) and a colour bar (row 1), ProtoPNet's top prototypes' boxes and nearest patches
    (row 2), the post-hoc PPN's top prototypes' heatmaps and nearest patches (row 3), and a legend."""
    columns = max(1 + len(heatmaps), 2 * max(len(protopnet), len(posthoc), 1))
    fig, axes = plt.subplots(3, columns, figsize=(1.6 * columns, 5.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], image, title="input")
    for col, (name, heatmap) in enumerate(heatmaps.items(), start=1):
        _show(axes[0, col], image, heatmap, f"{name}\nexplains\n{explained[name][:22]}", 6)
    if heatmaps:
        bar = fig.colorbar(
            plt.cm.ScalarMappable(cmap="jet"), ax=list(axes[0]), fraction=0.02, ticks=[0, 1]
        )
        bar.ax.set_yticklabels(["low", "high"], fontsize=6)
        bar.set_label("evidence (each map\nscaled to its range)", fontsize=6)
    for row, (name, terms) in enumerate((("ProtoPNet", protopnet), ("post-hoc PPN", posthoc)), 1):
        for i, term in enumerate(terms):
            ax = axes[row, 2 * i]
            _show(ax, image, term.heatmap, f"{name}: {term.caption}")
            if term.box is not None:
                _box(ax, term.box, "yellow")
            if term.patch is not None:
                against = term.caption.endswith("against")
                caption = "looks like\n(counts against)" if against else "looks like"
                _show(axes[row, 2 * i + 1], term.patch, title=caption)
    fig.suptitle(title, fontsize=8)
    fig.text(
        0.01,
        0.005,
        "pJ: +X for = prototype J adds X to the explained class's logit (ProtoPNet: its weight x "
        "max similarity; post-hoc PPN: mean f.p~); pJ: -X against = it lowers the logit by X: the "
        "image looks like that prototype, and that counts against the class (its map shows where). "
        "Yellow box: where ProtoPNet's prototype activates most. 'looks like': the training patch "
        "the prototype was projected onto.",
        fontsize=5.5,
        wrap=True,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_figure(path: Path, curves: dict[str, Faithfulness]) -> Path:
    """Mean deletion and insertion curves (class probability vs share of pixels) of every method."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, mode in zip(axes, ("deletion", "insertion"), strict=True):
        for name, faithfulness in curves.items():
            curve: torch.Tensor = getattr(faithfulness, mode)  # (N, T)
            auc = getattr(faithfulness, f"{mode}_auc").mean()
            ax.plot(
                np.linspace(0, 1, curve.shape[1]),
                curve.mean(0).numpy(),
                label=f"{name} ({auc:.3f})",
            )
        ax.set_xlabel(f"share of pixels {'removed' if mode == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the explained class")
        ax.set_title(f"{mode} (AUC)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_figure(
    path: Path, labels: np.ndarray, predictions: np.ndarray, class_names: list[str]
) -> Path:
    """The black box's confusion matrix on the test split (rows: true class, counts in the cells)."""
    C = len(class_names)
    counts = np.zeros((C, C), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    side = max(4.0, 0.45 * C + 2.5)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        if n:
            colour = "white" if n > counts.max() / 2 else "black"
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(C), class_names, rotation=90, fontsize=6)
    ax.set_yticks(range(C), class_names, fontsize=6)
    ax.set_xlabel("black box predicts")
    ax.set_ylabel("true class")
    accuracy = float(np.trace(counts)) / max(1, counts.sum())
    ax.set_title(f"black box on the test split: accuracy {accuracy:.3f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
