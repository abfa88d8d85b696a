"""Per prototype of a post-hoc artifact: on which true part its heatmap peak lands, on its class's test images.

python experiments/part_peaks.py runs/demo/<date>/decompose/posthoc.pt --data data/parts
"""

from __future__ import annotations

import argparse

import torch

from proto_lightning.data import CUB200DataModule
from proto_lightning.explainers import PostHocExplainer
from proto_lightning.metrics.part_peaks import modal_part_share, prototype_peak_parts
from proto_lightning.models.posthoc import PostHocPrototypeNetwork


def artifact_datamodule(model: PostHocPrototypeNetwork, data: str) -> CUB200DataModule:
    """The part dataset at `data`, prepared as the artifact's network was (size, mean, std)."""
    datamodule = CUB200DataModule(
        data,
        image_size=model.extras["image_size"],
        val_fraction=0.1,
        mean=model.extras["mean"],
        std=model.extras["std"],
    )
    datamodule.setup()
    return datamodule


@torch.no_grad()
def part_hits(
    model: PostHocPrototypeNetwork, datamodule: CUB200DataModule
) -> tuple[dict[tuple[int, int], torch.Tensor], float]:
    """Per (class, prototype), the true part (1-based; -1 none) its peak hits on each test image of
    the class (`prototype_peak_parts`, as `evaluate`'s true-part localisation); and the radius."""
    explainer = PostHocExplainer(model)
    C, k = model.num_classes, model.prototypes_per_class
    parts = {(c, i): [] for c in range(C) for i in range(k)}
    for batch in datamodule.test_dataloader():
        maps = explainer.prototype_maps(batch["image"], batch["label"])  # (B, k, h, w)
        size = tuple(batch["image"].shape[-2:])
        hits = prototype_peak_parts(maps, batch["keypoints"], size)  # (B, k)
        for label, row in zip(batch["label"].tolist(), hits.tolist(), strict=True):
            for i, part in enumerate(row):
                parts[label, i].append(part)
    radius = model.extras["image_size"] / model.extras["map_size"][1]  # one feature cell
    return {key: torch.tensor(hits) for key, hits in parts.items()}, radius


def mean_modal_share(hits: dict[tuple[int, int], torch.Tensor]) -> float:
    """The share of a prototype's peaks on its most frequent true part, averaged over prototypes."""
    shares = [modal_part_share(h)[1] for h in hits.values()]
    return sum(shares) / len(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--data", default="data/parts")
    parser.add_argument(
        "--trust-file",
        action="store_true",
        help="unpickle any object in the artifact (runs code in it): only for a file you made",
    )
    args = parser.parse_args()
    model = PostHocPrototypeNetwork.load(args.artifact, trust_file=args.trust_file)
    datamodule = artifact_datamodule(model, args.data)
    names = datamodule.records.part_names
    hits, radius = part_hits(model, datamodule)
    print(f"peak within {radius:.0f} px of a visible true part, on each class's test images")
    print(f"{'class':<30}{'proto':>6}  {'modal part':<12}{'share':>7}{'no part':>9}")
    for (c, i), h in hits.items():
        part, share = modal_part_share(h)
        miss = float((h < 0).float().mean())
        print(
            f"{datamodule.records.class_names[c][:29]:<30}{i:>6}  {names[part - 1] if part > 0 else '-':<12}{share:>7.0%}{miss:>9.0%}"
        )
    print(f"mean share on the modal part: {mean_modal_share(hits):.0%} over {len(hits)} prototypes")


if __name__ == "__main__":
    main()
