"""PNG galleries: every class's prototypes as their nearest training patches, and their heatmaps on test images."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)


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
    model, datamodule, label: int, i: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The push image (H, W, 3) uint8 prototype i of class `label` was projected onto, and its
    high-activation box (y0, y1, x0, x1; the whole image when none was recorded)."""
    patch = model.nearest_patch(label, i)
    push = datamodule.push_set
    sample = push[int(np.searchsorted(push.rows, patch["row"]))]
    image = to_uint8(sample["image"], datamodule.mean, datamodule.std)
    box = patch.get("high_activation_box", (0, image.shape[0], 0, image.shape[1]))
    return image, tuple(int(v) for v in box)


def draw_prototype_grid(model, datamodule, path: Path, tile: int = 96) -> Path:
    """One row per class, per prototype: its nearest push image with the high-activation box, and the crop.

    `model` is any network answering num_classes, prototypes_per_class and nearest_patch(c, i)
    (the post-hoc PPN and ProtoPNet both do).
    """
    C, k = model.num_classes, model.prototypes_per_class
    grid = Image.new("RGB", (2 * k * tile, C * (tile + 14)), "white")
    draw = ImageDraw.Draw(grid)
    for c in range(C):
        y = c * (tile + 14)
        draw.text((2, y), datamodule.records.class_names[c][:40], fill="black")
        for i in range(k):
            image, (y0, y1, x0, x1) = nearest_patch_image(model, datamodule, c, i)
            framed = Image.fromarray(image)
            ImageDraw.Draw(framed).rectangle(
                [x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 0), width=2
            )
            grid.paste(framed.resize((tile, tile)), (2 * i * tile, y + 14))
            grid.paste(
                Image.fromarray(image[y0:y1, x0:x1]).resize((tile, tile)),
                ((2 * i + 1) * tile, y + 14),
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


class PrototypeGalleryCallback(L.Callback):
    """After testing, write `prototypes.png` (class rows, prototype columns: nearest patch with its
    high-activation box, and the crop) and `heatmaps.png` (a few test images with the predicted
    class's prototype heatmaps, ranked, with their contributions); log both to W&B when it is the logger.
    """

    def __init__(self, out_dir: str, tile: int = 96, test_images: int = 4) -> None:
        self.out_dir = Path(out_dir)
        self.tile = tile
        self.test_images = test_images

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or pl_module.projection is None:
            return
        datamodule = trainer.datamodule
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = [
            draw_prototype_grid(pl_module, datamodule, self.out_dir / "prototypes.png", self.tile),
            self._heatmap_grid(pl_module, datamodule),
        ]
        log.info("prototype gallery written to %s", self.out_dir)
        if type(trainer.logger).__name__ == "WandbLogger":
            trainer.logger.log_image(
                key="gallery", images=[str(p) for p in paths], caption=[p.stem for p in paths]
            )

    def _tile(self, array: np.ndarray) -> Image.Image:
        return Image.fromarray(array).resize((self.tile, self.tile), Image.BILINEAR)

    @torch.no_grad()
    def _heatmap_grid(self, model, datamodule) -> Path:
        test = datamodule.test_set
        n = min(self.test_images, len(test))
        samples = [test[i] for i in range(n)]
        images = torch.stack([s["image"] for s in samples]).to(model.device)
        explanations = model.explain(images)
        k, t = model.prototypes_per_class, self.tile
        grid = Image.new("RGB", ((k + 1) * t, n * (t + 14)), "white")
        draw = ImageDraw.Draw(grid)
        for row, (sample, explanation) in enumerate(zip(samples, explanations, strict=True)):
            y = row * (t + 14)
            image = to_uint8(sample["image"], datamodule.mean, datamodule.std)
            name = datamodule.records.class_names[explanation.label]
            draw.text((2, y), f"pred {name[:30]} (true {sample['label']})", fill="black")
            grid.paste(self._tile(image), (0, y + 14))
            for col in range(k):
                heat = overlay(image, explanation.upsampled[col].numpy())
                grid.paste(self._tile(heat), ((col + 1) * t, y + 14))
                draw.text(
                    ((col + 1) * t + 2, y + 16),
                    f"p{int(explanation.prototype_index[col])}: {float(explanation.contributions[col]):+.2f}",
                    fill="white",
                )
        path = self.out_dir / "heatmaps.png"
        grid.save(path)
        return path
