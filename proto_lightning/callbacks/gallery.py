"""PNG galleries: every class's prototypes as their nearest training patches, and their heatmaps on test images."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw

from proto_lightning.evaluation.drawing import draw_prototype_grid, overlay, to_uint8
from proto_lightning.loggers import is_wandb, log_figures
from proto_lightning.prototypes.network import PrototypeNetwork

log = logging.getLogger(__name__)


class PrototypeGalleryCallback(L.Callback):
    """After testing, write `prototypes.png` (class rows, prototype columns: nearest patch with its
    high-activation box, and the crop) and `heatmaps.png` (a few test images with the predicted
    class's prototype heatmaps, ranked, with their contributions); log both to W&B when it is the logger.
    """

    def __init__(self, out_dir: str, tile: int = 96, test_images: int = 4) -> None:
        self.out_dir = Path(out_dir)
        self.tile = tile
        self.test_images = test_images

    def on_test_end(self, trainer: L.Trainer, pl_module: PrototypeNetwork) -> None:
        if not trainer.is_global_zero or pl_module.projection is None:
            return
        datamodule = trainer.datamodule
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = [
            draw_prototype_grid(pl_module, datamodule, self.out_dir / "prototypes.png", self.tile),
            self._heatmap_grid(pl_module, datamodule),
        ]
        log.info("prototype gallery written to %s", self.out_dir)
        if is_wandb(trainer.logger):
            log_figures(trainer.logger, "gallery", paths)

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
            true = datamodule.records.class_names[int(sample["label"])]
            draw.text((2, y), f"predicted {name[:24]}, true {true[:24]}", fill="black")
            grid.paste(self._tile(image), (0, y + 14))
            for col in range(k):
                heat = overlay(image, explanation.upsampled[col].numpy())
                grid.paste(self._tile(heat), ((col + 1) * t, y + 14))
                draw.text(
                    ((col + 1) * t + 2, y + 16),
                    explanation.terms()[col],
                    fill="red" if explanation.against[col] else "white",
                )
        path = self.out_dir / "heatmaps.png"
        grid.save(path)
        return path
