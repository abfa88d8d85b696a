"""The faithfulness callback's overhead: quick-start black-box epochs with and without it, and its
per-image cost at CUB size (ResNet-34, 224 px, 200 classes; random weights, nothing downloaded).

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

import torch
from omegaconf import open_dict

from proto_lightning.callbacks import FaithfulnessCallback
from proto_lightning.config import compose_config
from proto_lightning.data.generate import make_dataset
from proto_lightning.models import BlackBoxClassifier
from proto_lightning.stages.blackbox import run_blackbox

QUICKSTART = {"classes": 10, "per_class": 60, "size": 128, "seed": 0}  # the Makefile's dataset
TINY = {"classes": 4, "per_class": 8, "size": 48, "seed": 0}


def epoch_seconds(
    data: Path, run: Path, epochs: int, callback: bool, extra: list[str]
) -> list[float]:
    """time/epoch (training + validation) of each quick-start black-box epoch after the first."""
    overrides = [
        "experiment=quickstart",
        f"data.root={data}",
        f"trainer.max_epochs={epochs}",
        "logger=csv",
        "callbacks.progress=null",
        "run_test=false",
        *extra,
    ]
    cfg = compose_config(
        "blackbox", [*overrides, *([] if callback else ["callbacks.faithfulness=null"])]
    )
    with open_dict(cfg):
        cfg.run_dir = str(run)
        del cfg["hydra"]
    run_blackbox(cfg)
    with (run / "logs" / "metrics.csv").open() as f:
        return [float(r["time/epoch"]) for r in csv.DictReader(f) if r.get("time/epoch")][1:]


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
    """Time both runs, print them, return the overhead (and CUB-size cost) rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/parts")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--cub-images", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data)
        if args.quick or not (data / "images.txt").is_file():
            data = make_dataset(Path(tmp) / "data", **(TINY if args.quick else QUICKSTART))
        epochs = 2 if args.quick else args.epochs
        extra = ["data.val_fraction=0.25"] if args.quick else []  # 4 classes x 8 images
        times = {
            on: statistics.median(epoch_seconds(data, Path(tmp) / f"run_{on}", epochs, on, extra))
            for on in (False, True)
        }
    overhead = times[True] / times[False] - 1
    print(
        f"quick-start epoch: {times[False]:.2f} s without the callback, {times[True]:.2f} s with it"
    )
    rows.append(("faithfulness callback: epoch overhead", f"{overhead:+.1%}", "<= +10%"))
    if not args.quick:
        per_image = cub_seconds_per_image(args.cub_images, 10)
        print(
            f"CUB size (ResNet-34, 224 px, 10 steps), {torch.get_num_threads()} threads: {per_image:.2f} s per image"
        )
        rows.append(("faithfulness callback: CUB-size s/image (CPU)", f"{per_image:.2f}", "report"))
    return rows


if __name__ == "__main__":
    for row in main():
        print(*row, sep="  ")
