"""Peak host memory and time of the decomposition on a CUB-sized push set, without the backbone.

A synthetic stand-in of CUB-200-2011's push split with a ResNet-50-like head: 5,994 images in 200
classes, 7 x 7 feature maps of D = 2048 random non-negative features (|N(0, 1)|), streamed through
the same feature store (memory-mapped beyond `--ram-budget-gb`), batched NMF + residual refinement
and FAISS projection as the decompose stage. Prints the time of each part and the peak RSS.

    python benchmarks/decompose_memory.py                  # CUB-sized (a few minutes on 2 cores)
    python benchmarks/decompose_memory.py --quick          # 20 classes, D = 256 (CI)
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from proto_lightning.prototypes.decomposition import NMFSettings, decompose_head
from proto_lightning.prototypes.features import collect_features
from proto_lightning.prototypes.projection import project_prototypes


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class RandomFeatureBatches:
    """Batches shaped like the push loader's, with a features function returning |N(0, 1)| maps."""

    def __init__(self, labels: np.ndarray, dim: int, size: int, batch: int) -> None:
        self.labels, self.dim, self.size, self.batch = labels, dim, size, batch

    def __iter__(self):
        for start in range(0, len(self.labels), self.batch):
            rows = np.arange(start, min(start + self.batch, len(self.labels)))
            yield {
                "image": torch.from_numpy(rows),  # the "image" is its row: the features seed
                "label": torch.from_numpy(self.labels[rows]),
                "row": torch.from_numpy(rows),
                "image_id": torch.from_numpy(rows + 1),
            }

    def features(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,) rows -> (B, D, H, W) non-negative features, deterministic per row."""
        maps = [
            torch.randn(
                self.dim, self.size, self.size, generator=torch.Generator().manual_seed(int(r))
            ).abs()
            for r in rows
        ]
        return torch.stack(maps)


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Run the three parts on the stand-in, print times and peak RSS, return the summary rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5994)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--map-size", type=int, default=7)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--ram-budget-gb", type=float, default=4.0)
    parser.add_argument("--nmf-iters", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.classes, args.dim, args.nmf_iters = 600, 20, 256, 50
    labels = np.repeat(np.arange(args.classes), -(-args.images // args.classes))[: args.images]
    batches = RandomFeatureBatches(labels, args.dim, args.map_size, batch=64)
    V = torch.randn(args.classes, args.dim, generator=torch.Generator().manual_seed(0))
    size_gib = args.images * args.map_size**2 * args.dim * 4 / 2**30
    print(
        f"stand-in: {args.images} images, {args.classes} classes, {args.map_size}x{args.map_size} maps, "
        f"D={args.dim} ({size_gib:.2f} GiB of float32 features), RAM budget {args.ram_budget_gb} GiB, "
        f"{torch.get_num_threads()} threads"
    )
    times = {}
    with tempfile.TemporaryDirectory() as spill:
        start = time.perf_counter()
        store = collect_features(
            batches.features, batches, labels, args.classes, args.ram_budget_gb, Path(spill)
        )
        times["features (store)"] = time.perf_counter() - start
        rss_store = peak_rss_gib()
        start = time.perf_counter()
        decomposition = decompose_head(store, V, args.k, NMFSettings(max_iter=args.nmf_iters))
        times["nmf + refinement"] = time.perf_counter() - start
        start = time.perf_counter()
        project_prototypes(store, decomposition.prototypes, "ip", True, "cpu")
        times["projection"] = time.perf_counter() - start
    print(f"{'part':<20}{'seconds':>10}")
    for name, seconds in times.items():
        print(f"{name:<20}{seconds:>10.1f}")
    print(f"{'total':<20}{sum(times.values()):>10.1f}")
    print(
        f"peak RSS: {peak_rss_gib():.2f} GiB (after the store: {rss_store:.2f} GiB); target <= 8 GiB"
    )
    print(f"relative head error: {decomposition.relative_head_error(V):.2e}")
    label = f"decompose {args.images} img x {args.map_size**2} x D={args.dim}"
    return [
        (f"{label}: peak RSS", f"{peak_rss_gib():.2f} GiB", "<= 8 GiB"),
        (f"{label}: time", f"{sum(times.values()):.0f} s", ""),
    ]


if __name__ == "__main__":
    main()
