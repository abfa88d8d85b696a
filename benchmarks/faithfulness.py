"""Deletion / insertion: our batched curves vs the reference one-image, one-step-at-a-time loop.

Same model, images, heatmaps and targets; prints images per second of each, their ratio, and the
largest difference between the curves (they must agree to float precision). The loop is RISE's
`CausalMetric` procedure (Petsiuk et al. 2018), `proto_lightning.metrics.faithfulness.causal_curve_loop`.

    python benchmarks/faithfulness.py                 # quick-start black box (small CNN, 128 px)
    python benchmarks/faithfulness.py --backbone resnet50 --image-size 224 --steps 224
    python benchmarks/faithfulness.py --quick         # seconds (CI)
"""

from __future__ import annotations

import argparse
import time

import torch

from proto_lightning.metrics.faithfulness import causal_curve_loop, causal_curves
from proto_lightning.models import BlackBoxNet


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Time both implementations on one random model and image set; print the table, return its ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="perturbed images per forward (GPU 256, CPU 16)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="4 images, 10 steps, 64 px")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.image_size = 4, 10, 64
    torch.manual_seed(0)
    device = torch.device(args.device)
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 16)
    model = BlackBoxNet(args.backbone, 10).eval().to(device)
    size = args.image_size
    images = torch.randn(args.images, 3, size, size, device=device)
    heatmaps = torch.rand(args.images, size, size, device=device)
    with torch.no_grad():
        targets = model(images).argmax(1)

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    rows = []
    for mode, kind in (("deletion", "zero"), ("insertion", "blur")):
        # one untimed call of each first: one-time costs (RISE's kernel, from scipy, is built on
        # first use) would otherwise be charged to whichever path runs first
        causal_curves(model, images[:1], heatmaps[:1], targets[:1], mode, args.steps, kind)
        causal_curve_loop(model, images[0], heatmaps[0], int(targets[0]), mode, args.steps, kind)
        batched, t_batched = timed(
            lambda mode=mode, kind=kind: causal_curves(
                model, images, heatmaps, targets, mode, args.steps, kind, args.batch_size
            )
        )
        loop, t_loop = timed(
            lambda mode=mode, kind=kind: torch.stack(
                [
                    causal_curve_loop(
                        model, images[b], heatmaps[b], int(targets[b]), mode, args.steps, kind
                    )
                    for b in range(args.images)
                ]
            )
        )
        gap = float((batched.cpu() - loop).abs().max())
        rows.append((mode, args.images / t_loop, args.images / t_batched, t_loop / t_batched, gap))
    print(
        f"device {device}, {args.backbone} at {size} px, {args.images} images, {args.steps} steps, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"{'curve':<10} {'loop img/s':>11} {'batched img/s':>14} {'ratio':>7} {'max |diff|':>11}")
    for mode, loop_rate, batched_rate, ratio, gap in rows:
        print(f"{mode:<10} {loop_rate:>11.2f} {batched_rate:>14.2f} {ratio:>6.1f}x {gap:>11.2e}")
    return [
        (f"{mode} batched vs loop ({device.type}, max diff {gap:.1e})", f"{ratio:.1f}x", ">= 5x")
        for mode, _, _, ratio, gap in rows
    ]


if __name__ == "__main__":
    main()
