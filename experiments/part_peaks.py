"""Per prototype of a post-hoc artifact: on which true part its heatmap peak lands, on its class's test images.

python experiments/part_peaks.py runs/demo/<date>/decompose/posthoc.pt --data data/parts
"""

from __future__ import annotations

import argparse

import torch

from proto_lightning.data import CUB200DataModule
from proto_lightning.metrics.part_peaks import assign_parts, modal_part_share, peak_locations
from proto_lightning.models.posthoc import PostHocPrototypeNetwork


@torch.no_grad()
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
    size = model.extras["image_size"]
    datamodule = CUB200DataModule(
        args.data,
        image_size=size,
        val_fraction=0.1,
        mean=model.extras["mean"],
        std=model.extras["std"],
    )
    datamodule.setup()
    names = datamodule.records.part_names
    radius = size / model.extras["map_size"][0]  # one feature cell
    C, k = model.num_classes, model.prototypes_per_class
    parts = {(c, i): [] for c in range(C) for i in range(k)}
    for batch in datamodule.test_dataloader():
        for c in batch["label"].unique().tolist():
            mask = batch["label"] == c
            explanations = model.explain(batch["image"][mask], target=c)
            for e, keypoints in zip(explanations, batch["keypoints"][mask], strict=True):
                peaks = peak_locations(e.upsampled)  # (k, 2), rank order
                hit = assign_parts(peaks, keypoints.expand(k, -1, -1), radius)
                for rank, i in enumerate(e.prototype_index.tolist()):
                    parts[c, i].append(int(hit[rank]))
    print(f"peak within {radius:.0f} px of a visible true part, on each class's test images")
    print(f"{'class':<30}{'proto':>6}  {'modal part':<12}{'share':>7}{'no part':>9}")
    shares = []
    for (c, i), hits in parts.items():
        hits_t = torch.tensor(hits)
        part, share = modal_part_share(hits_t)
        shares.append(share)
        miss = float((hits_t < 0).float().mean())
        print(
            f"{datamodule.records.class_names[c][:29]:<30}{i:>6}  {names[part - 1] if part > 0 else '-':<12}{share:>7.0%}{miss:>9.0%}"
        )
    print(
        f"mean share on the modal part: {sum(shares) / len(shares):.0%} over {len(shares)} prototypes"
    )


if __name__ == "__main__":
    main()
