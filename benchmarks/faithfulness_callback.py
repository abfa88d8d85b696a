"""The faithfulness callback's overhead on the quick-start black box, and its per-image cost at CUB
size (ResNet-34, 224 px, 200 classes; random weights, nothing downloaded).

A quick-start black box is trained without the callback (its epoch time is the reference); then a
validation of it is timed with and without the callback (best of three each). The callback runs at
one validation in `every_n_epochs` (conf/callbacks/train.yaml), so its overhead per epoch is
(validation with - validation without) / every_n_epochs / epoch.

    python benchmarks/faithfulness_callback.py            # the quick-start dataset (data/parts)
    python benchmarks/faithfulness_callback.py --quick    # a tiny generated dataset, no CUB-size part
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from proto_lightning.callbacks import FaithfulnessCallback
from proto_lightning.config import compose_config
from proto_lightning.data.generate import make_dataset
from proto_lightning.models import BlackBoxClassifier
from proto_lightning.stages.blackbox import run_blackbox

# the Makefile's dataset
QUICKSTART = {"classes": 10, "per_class": 100, "size": 128, "seed": 0, "train_fraction": 0.6}
TINY = {"classes": 4, "per_class": 8, "size": 48, "seed": 0}


def quickstart_config(data: Path, run: Path, epochs: int, extra: list[str]) -> DictConfig:
    """The quick-start black box's config, without the callback, writing into `run`."""
    overrides = [
        "experiment=quickstart",
        f"data.root={data}",
        f"trainer.max_epochs={epochs}",
        "logger=csv",
        "callbacks.progress=null",
        "callbacks.faithfulness=null",
        "run_test=false",
        *extra,
    ]
    cfg = compose_config("blackbox", overrides)
    with open_dict(cfg):
        cfg.run_dir = str(run)
        del cfg["hydra"]
    return cfg


def validation_seconds(
    module: L.LightningModule, datamodule, callbacks: list[L.Callback], repeats: int = 3
) -> float:
    """Best of `repeats` wall-clock times of one validation of `module` with `callbacks`."""
    times = []
    for _ in range(repeats):
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=callbacks
        )
        start = time.perf_counter()
        trainer.validate(module, datamodule=datamodule, verbose=False)
        times.append(time.perf_counter() - start)
    return min(times)


def cub_seconds_per_image(images: int, steps: int) -> float:
    """Seconds per image of one callback measurement (Grad-CAM, deletion and insertion) at CUB size."""
    model_cfg = compose_config("blackbox", ["data.root=unused"]).model
    module = BlackBoxClassifier(
        {"name": "resnet34", "weights": None}, num_classes=200, optimizer=model_cfg.optimizer
    ).eval()
    evaluation = compose_config("evaluate", ["data.root=unused"]).evaluation
    callback = FaithfulnessCallback(evaluation, images=images, steps=steps)
    dataset = [{"image": torch.randn(3, 224, 224)} for _ in range(images)]
    start = time.perf_counter()
    callback.measure(module, None, dataset)
    return (time.perf_counter() - start) / images


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Train, time, print; return the overhead (and CUB-size cost) rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/parts")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--cub-images", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data)
        if args.quick or not (data / "images.txt").is_file():
            data = make_dataset(Path(tmp) / "data", **(TINY if args.quick else QUICKSTART))
        extra = ["data.val_fraction=0.25"] if args.quick else []  # 4 classes x 8 images
        epochs = 2 if args.quick else args.epochs
        cfg = quickstart_config(data, Path(tmp) / "run", epochs, extra)
        result = run_blackbox(cfg)
        with (result.run_dir / "logs" / "metrics.csv").open() as f:
            epoch = [float(r["time/epoch"]) for r in csv.DictReader(f) if r.get("time/epoch")]
        epoch_s = statistics.mean(epoch[1:] or epoch)
        module = BlackBoxClassifier.load_checkpoint(result.artifacts["last checkpoint"])
        datamodule = instantiate(cfg.data)
        settings = compose_config("blackbox", ["experiment=quickstart", "data.root=x"]).callbacks
        faithfulness = settings.faithfulness
        callback = FaithfulnessCallback(
            faithfulness.evaluation,
            images=faithfulness.images,
            steps=faithfulness.steps,
            every_n_epochs=1,  # measure at this validation; scaled by the configured period below
        )
        without = validation_seconds(module, datamodule, [])
        with_callback = validation_seconds(module, datamodule, [callback])
    every = faithfulness.every_n_epochs
    overhead = (with_callback - without) / every / epoch_s
    print(
        f"quick-start epoch {epoch_s:.2f} s; validation {without:.2f} s without the callback, "
        f"{with_callback:.2f} s with it ({faithfulness.images} images, {faithfulness.steps} steps); "
        f"it runs every {every} epochs"
    )
    # the target is judged on the quick-start; --quick's tiny epochs (0.2 s) only show that it runs
    target = "not judged: tiny data (--quick)" if args.quick else "<= +10%"
    rows = [("faithfulness callback: overhead per epoch", f"{overhead:+.1%}", target)]
    if not args.quick:
        per_image = cub_seconds_per_image(args.cub_images, faithfulness.steps)
        print(
            f"CUB size (ResNet-34, 224 px, {faithfulness.steps} steps), "
            f"{torch.get_num_threads()} CPU threads: {per_image:.2f} s per image"
        )
        rows.append(("faithfulness callback: CUB-size s/image (CPU)", f"{per_image:.2f}", "report"))
    return rows


if __name__ == "__main__":
    for row in main():
        print(*row, sep="  ")
