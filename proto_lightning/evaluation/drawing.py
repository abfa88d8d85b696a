"""Pictures of images, heatmaps and prototypes, shared by the gallery callback and the evaluation figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from proto_lightning.prototypes.network import PrototypeNetwork


def to_uint8(image: torch.Tensor, mean: tuple, std: tuple) -> np.ndarray:
    """Normalised (3, H, W) tensor -> (H, W, 3) uint8."""
    image = image.cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> (H, W, 3) uint8 jet-like colours."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a heatmap (H, W), min-max normalised, over an image (H, W, 3)."""
    span = heatmap.max() - heatmap.min()
    normalised = (heatmap - heatmap.min()) / span if span > 0 else np.zeros_like(heatmap)
    return ((1 - alpha) * image + alpha * jet(normalised)).astype(np.uint8)


def nearest_patch_image(
    model: PrototypeNetwork, datamodule, label: int, i: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The push image (H, W, 3) uint8 prototype i of class `label` was projected onto, and its
    high-activation box (y0, y1, x0, x1; the whole image when none was recorded)."""
    patch = model.nearest_patch(label, i)
    sample = datamodule.push_set.by_row(patch["row"])
    image = to_uint8(sample["image"], datamodule.mean, datamodule.std)
    box = patch.get("high_activation_box", (0, image.shape[0], 0, image.shape[1]))
    return image, tuple(int(v) for v in box)


RF_COLOUR, HIGH_COLOUR = (
    (0, 200, 255),
    (255, 255, 0),
)  # cyan: receptive field; yellow: high activation


def draw_prototype_grid(model: PrototypeNetwork, datamodule, path: Path, tile: int = 96) -> Path:
    """One row per class, per prototype: the push image it was projected onto, framed by the patch's
    receptive field (cyan) and its high-activation box (yellow), and the high-activation crop."""
    C, k = model.num_classes, model.prototypes_per_class
    grid = Image.new("RGB", (2 * k * tile, 14 + C * (tile + 14)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text(
        (2, 0),
        "cyan: receptive field of the patch; yellow: high-activation box, cropped right",
        fill="black",
    )
    for c in range(C):
        y = 14 + c * (tile + 14)
        draw.text((2, y), datamodule.records.class_names[c][:40], fill="black")
        for i in range(k):
            image, (y0, y1, x0, x1) = nearest_patch_image(model, datamodule, c, i)
            framed = Image.fromarray(image)
            rf = model.nearest_patch(c, i).get("rf_box")
            if rf is not None:
                ry0, ry1, rx0, rx1 = rf
                ImageDraw.Draw(framed).rectangle(
                    [rx0, ry0, rx1 - 1, ry1 - 1], outline=RF_COLOUR, width=2
                )
            ImageDraw.Draw(framed).rectangle([x0, y0, x1 - 1, y1 - 1], outline=HIGH_COLOUR, width=2)
            grid.paste(framed.resize((tile, tile)), (2 * i * tile, y + 14))
            grid.paste(
                Image.fromarray(image[y0:y1, x0:x1]).resize((tile, tile)),
                ((2 * i + 1) * tile, y + 14),
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
