"""Decompose time of a timm ConvNeXt (signed features: semi-NMF) against a timm ResNet of the same
width (D = 512, ReLU features: NMF), each brought as a plain state dict (`blackbox=<name>
blackbox_weights=<file>`; random weights, nothing downloaded) and decomposed on the same data.

    python benchmarks/decompose_backbones.py            # the quick-start dataset (data/parts; made if missing)
    python benchmarks/decompose_backbones.py --quick    # a tiny generated dataset
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch
from omegaconf import open_dict

from proto_lightning.config import compose_config
from proto_lightning.data.generate import make_dataset
from proto_lightning.stages.decompose import run_decompose

MODELS = {"ConvNeXt (convnext_pico)": "convnext_pico", "ResNet (resnet18)": "resnet18"}
PARTS = ("features", "nmf", "refinement", "boxes")


def decompose_seconds(
    name: str, data: Path, image_size: int, tmp: Path, extra: list[str]
) -> dict[str, float]:
    """The decompose stage's own time split for the timm model `name` (random weights)."""
    torch.manual_seed(0)
    weights = tmp / f"{name}.pt"
    torch.save(timm.create_model(name, num_classes=10).state_dict(), weights)
    cfg = compose_config(
        "decompose",
        [
            f"data.root={data}",
            f"data.image_size={image_size}",
            f"blackbox={name}",
            f"blackbox_weights={weights}",
            "trainer=cpu",
            "logger=csv",
            "callbacks.progress=null",
            "callbacks.gallery=null",
            "callbacks.faithfulness=null",
            *extra,
        ],
    )
    with open_dict(cfg):
        cfg.run_dir = str(tmp / name)
        del cfg["hydra"]
    result = run_decompose(cfg)
    return {part: result.metrics[f"time/{part}"] for part in PARTS}


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Time both models' decompositions; print the split; return the ratio row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/parts"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, size, extra = args.data, 128, []
        if args.quick:  # 6 train images per class: too few to hold out validation images
            data, size = make_dataset(tmp / "parts", classes=10, per_class=10, size=64), 64
            extra = ["data.val_fraction=0"]
        elif not (data / "images.txt").is_file():
            data = make_dataset(tmp / "parts")
        times = {
            label: decompose_seconds(name, data, size, tmp, extra) for label, name in MODELS.items()
        }
    print(f"decompose on {data} at {size} px, {torch.get_num_threads()} threads")
    print(f"{'model':<26}" + "".join(f"{p:>16}" for p in PARTS) + f"{'total':>10}")
    for label, parts in times.items():
        cells = "".join(f"{parts[p]:>16.2f}" for p in PARTS)
        print(f"{label:<26}{cells}{sum(parts.values()):>10.2f}")
    convnext, resnet = (sum(t.values()) for t in times.values())
    return [("decompose time, ConvNeXt / ResNet (D=512)", f"{convnext / resnet:.2f}x", "reported")]


if __name__ == "__main__":
    main()
