"""ImageNet at 1/100 on the CPU: the streaming decompose's time and peak memory against classes and images.

A stand-in of one rank's work at ImageNet scale without the backbone: C classes of n images whose
7 x 7 x D feature maps are random non-negative (|N(0, 1)|, seeded per image, made by the "forward
pass"), streamed class batch by class batch through the same steps as the decompose stage
(`plan_class_batches` -> `stream_class_batches` -> `decompose_stream`: NMF, refinement with the
`paper` objective, class-restricted projection). Each size runs in a fresh process, so its peak RSS
is its own. Printed: seconds and peak RSS per size, the exponents of time in classes and in images
(a log-log least-squares slope; 1 is linear), and refinement's share of the time with the worker
thread overlapping the next batch and without.

    python benchmarks/decompose_scale.py            # 50/100/200 classes x 128 images, D = 2048
    python benchmarks/decompose_scale.py --quick    # 8/16/32 classes x 32 images, D = 256 (CI)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def one_size(
    classes: int, images: int, dim: int, nmf_iters: int, overlap: bool, device: str = "cpu"
) -> dict:
    """Run the streaming decomposition on one stand-in size in this process; its figures."""
    from proto_lightning.prototypes.decomposition import NMFSettings
    from proto_lightning.prototypes.stream import (
        GIB,
        StreamSteps,
        decompose_stream,
        plan_class_batches,
        stream_class_batches,
    )

    size = 7
    labels = np.repeat(np.arange(classes), images)

    def features(rows: torch.Tensor) -> torch.Tensor:  # (B,) rows -> (B, D, 7, 7), per-row seed
        maps = [
            torch.randn(dim, size, size, generator=torch.Generator().manual_seed(int(r))).abs()
            for r in rows.cpu()
        ]
        return torch.stack(maps).to(device)

    def loader_of(chosen):
        rows = np.flatnonzero(np.isin(labels, chosen))
        for start in range(0, len(rows), 64):
            part = torch.from_numpy(rows[start : start + 64])
            yield {
                "image": part,
                "label": torch.from_numpy(labels[part]),
                "row": part,
                "image_id": part,
            }

    nmf = NMFSettings(max_iter=nmf_iters, classes_per_batch=16)
    plan = plan_class_batches(np.bincount(labels), size * size * dim, 16, 4 * GIB)
    V = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    result = decompose_stream(
        stream_class_batches(features, loader_of, labels, plan, device),
        V,
        StreamSteps(3, nmf),
        overlap=overlap,
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_gib": peak_rss_gib(),
        "refinement": result.timings["refinement"],
        "refinement_wait": result.timings["refinement_wait"],
        "head_error": result.decomposition.relative_head_error(V),
    }


def in_subprocess(
    classes: int, images: int, dim: int, nmf_iters: int, overlap: bool, device: str = "cpu"
) -> dict:
    """`one_size` in a fresh Python process (its own peak RSS)."""
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import decompose_scale as s; "
        f"print(json.dumps(s.one_size({classes}, {images}, {dim}, {nmf_iters}, {overlap}, "
        f"{device!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """Slope of log(seconds) against log(size): 1 for linear growth."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Measure every size, print the tables, return the summary rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--images", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--nmf-iters", type=int, default=200)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (the batches' device)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.images, args.dim, args.nmf_iters = [8, 16, 32], [16, 32, 64], 256, 50
    middle_images, middle_classes = args.images[len(args.images) // 2], args.classes[0]
    print(
        f"ImageNet stand-in: 7 x 7 x {args.dim} maps, k = 3, {args.nmf_iters} NMF iterations, "
        f"{args.device}, {torch.get_num_threads()} threads"
    )
    by_classes = [
        in_subprocess(c, middle_images, args.dim, args.nmf_iters, True, args.device)
        for c in args.classes
    ]
    by_images = [
        in_subprocess(middle_classes, n, args.dim, args.nmf_iters, True, args.device)
        for n in args.images
    ]
    sequential = in_subprocess(
        args.classes[0], middle_images, args.dim, args.nmf_iters, False, args.device
    )
    print(f"\n{'classes x images':<18}{'seconds':>9}{'peak RSS GiB':>14}{'head error':>12}")
    for c, r in zip(args.classes, by_classes, strict=True):
        print(
            f"{f'{c} x {middle_images}':<18}{r['seconds']:>9.1f}{r['peak_rss_gib']:>14.2f}"
            f"{r['head_error']:>12.1e}"
        )
    for n, r in zip(args.images, by_images, strict=True):
        print(
            f"{f'{middle_classes} x {n}':<18}{r['seconds']:>9.1f}{r['peak_rss_gib']:>14.2f}"
            f"{r['head_error']:>12.1e}"
        )
    in_classes = exponent(args.classes, [r["seconds"] for r in by_classes])
    in_images = exponent(args.images, [r["seconds"] for r in by_images])
    rss = [r["peak_rss_gib"] for r in by_classes]
    rss_growth = max(rss) / min(rss) - 1
    overlapped = by_classes[0]
    share_seq = sequential["refinement_wait"] / sequential["seconds"]
    share_overlap = overlapped["refinement_wait"] / overlapped["seconds"]
    print(f"\ntime exponent in classes {in_classes:.2f}, in images {in_images:.2f} (1 = linear)")
    print(f"peak RSS from {args.classes[0]} to {args.classes[-1]} classes: {rss_growth:+.1%}")
    print(
        f"refinement at {args.classes[0]} classes: {sequential['refinement']:.1f} s of CPU; "
        f"the device side waits {share_seq:.1%} of the time one batch after the other, "
        f"{share_overlap:.1%} with the worker overlapping the next batch"
    )
    label = f"ImageNet stand-in {args.classes[0]}-{args.classes[-1]} classes"
    return [
        (f"{label}: time exponent in classes", f"{in_classes:.2f}", "0.9-1.1"),
        (f"{label}: time exponent in images", f"{in_images:.2f}", "0.9-1.1"),
        (f"{label}: peak RSS growth", f"{rss_growth:+.1%}", "within 10%"),
        (f"{label}: refinement wait, sequential", f"{share_seq:.1%}", ""),
        (f"{label}: refinement wait, overlapped", f"{share_overlap:.1%}", ""),
    ]


if __name__ == "__main__":
    main()
