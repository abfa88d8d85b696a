"""Nearest-patch projection: FAISS exact search vs a ProtoPNet-style push loop, on the same features.

The push loop follows the official ProtoPNet push (cfchen-duke/ProtoPNet, push.py,
`update_prototypes_on_batch`): per batch of patches, torch L2 distances to every prototype, then a
Python loop over prototypes keeping the running minimum across batches. Our projection module
(`NearestPatchIndex`, FAISS exact flat indexes, one per class) does the same search. Also prints the achieved GFLOP/s of the FAISS search (2 m n d
flops for the distance GEMM) next to `torch.matmul` on the same shapes.

    python benchmarks/projection.py            # 600 prototypes x 300k patches x D=512
    python benchmarks/projection.py --quick    # small shapes, seconds (CI)
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import torch

from proto_lightning.prototypes.projection import NearestPatchIndex


def push_loop(
    prototypes: torch.Tensor,
    patches: torch.Tensor,
    labels: np.ndarray,
    proto_class: np.ndarray,
    hw: int,
    images_per_batch: int,
    class_specific: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Official-push style: per image batch, distances (B, m, H*W) copied to numpy, then a Python
    loop over prototypes; with `class_specific`, each prototype only sees its class's images of the
    batch (fancy-indexed, as the official code does)."""
    m = prototypes.shape[0]
    best_dist = np.full(m, np.inf)
    best_index = np.full(m, -1, dtype=np.int64)
    p_sq = (prototypes**2).sum(1)  # (m,)
    n_images = patches.shape[0] // hw
    for first in range(0, n_images, images_per_batch):
        x = patches[first * hw : (first + images_per_batch) * hw]  # (B*HW, d)
        dist = (x**2).sum(1)[:, None] - 2 * x @ prototypes.T + p_sq[None, :]  # (B*HW, m)
        dist = np.copy(dist.reshape(-1, hw, m).permute(0, 2, 1).numpy())  # (B, m, HW)
        batch_labels = labels[first : first + images_per_batch]
        members = {c: np.flatnonzero(batch_labels == c) for c in np.unique(batch_labels)}
        for j in range(m):
            if class_specific:
                rows = members.get(proto_class[j])
                if rows is None:
                    continue
                dist_j = dist[rows][:, j, :]  # (b_c, HW)
            else:
                rows, dist_j = np.arange(len(dist)), dist[:, j, :]
            if dist_j.min() < best_dist[j]:
                img, loc = np.unravel_index(np.argmin(dist_j), dist_j.shape)
                best_dist[j] = dist_j[img, loc]
                best_index[j] = (first + rows[img]) * hw + loc
    return best_index, best_dist


def faiss_search(
    prototypes: np.ndarray,
    patches: np.ndarray,
    labels: np.ndarray,
    proto_class: np.ndarray,
    hw: int,
    class_specific: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Our projection module (FAISS exact flat indexes): streaming adds, then one search."""
    n_images = len(labels)
    patch_labels = (
        np.repeat(labels, hw) if class_specific else np.zeros(n_images * hw, dtype=np.int64)
    )
    rows = np.repeat(np.arange(n_images), hw)
    locations = np.tile(np.stack(np.divmod(np.arange(hw), 7), 1), (n_images, 1))
    index = NearestPatchIndex(patches.shape[1], metric="l2")
    chunk = 80 * hw  # stream the patches in like a dataloader would
    for start in range(0, len(patches), chunk):
        s = slice(start, start + chunk)
        index.add(patches[s], patch_labels[s], rows[s], rows[s], locations[s])
    found = index.search(prototypes, proto_class if class_specific else None)
    return found.rows * hw + found.locations[:, 0] * 7 + found.locations[:, 1], found.distances


def timed(fn, *args, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Run the comparison, print its table, return (measure, value, target) rows for `run_all`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prototypes", type=int, default=600)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--patches", type=int, default=300_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--hw", type=int, default=49, choices=[49], help="patches per image (7x7 maps)"
    )
    parser.add_argument("--images-per-batch", type=int, default=80)
    parser.add_argument("--quick", action="store_true", help="small shapes for CI")
    args = parser.parse_args(argv)
    if args.quick:
        args.prototypes, args.classes, args.patches, args.dim = 100, 20, 20_000, 128
    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    n_images = args.patches // args.hw
    patches = np.maximum(rng.standard_normal((n_images * args.hw, args.dim), dtype=np.float32), 0)
    prototypes = np.maximum(rng.standard_normal((args.prototypes, args.dim), dtype=np.float32), 0)
    labels = rng.integers(0, args.classes, n_images)
    proto_class = np.arange(args.prototypes) % args.classes
    tp, tx = torch.from_numpy(prototypes), torch.from_numpy(patches)
    flops = 2.0 * args.prototypes * len(patches) * args.dim
    t_mm, _ = timed(torch.matmul, tp, tx.T, repeat=2)
    print(
        f"shapes: {args.prototypes} prototypes ({args.classes} classes) x {len(patches)} patches "
        f"({n_images} images x {args.hw}) x D={args.dim}; {threads} threads"
    )
    print(
        f"torch.matmul, all prototypes x all patches: {t_mm:.3f} s, {flops / t_mm / 1e9:.1f} GFLOP/s"
    )
    print(
        f"{'search':<16}{'push loop s':>12}{'faiss s':>10}{'speed-up':>10}{'faiss GFLOP/s':>15}"
        f"{'vs matmul':>11}{'same winner':>13}"
    )
    summary = []
    for class_specific in (True, False):
        t_push, (push_ids, push_d) = timed(
            push_loop, tp, tx, labels, proto_class, args.hw, args.images_per_batch, class_specific
        )
        t_faiss, (faiss_ids, faiss_d) = timed(
            faiss_search,
            prototypes,
            patches,
            labels,
            proto_class,
            args.hw,
            class_specific,
            repeat=2,
        )
        # flops FAISS actually does: per class, its prototypes x its patches (or everything)
        done = flops / args.classes if class_specific else flops
        name = "class-specific" if class_specific else "all patches"
        print(
            f"{name:<16}{t_push:>12.3f}{t_faiss:>10.3f}{t_push / t_faiss:>9.1f}x"
            f"{done / t_faiss / 1e9:>15.1f}{t_mm / (t_faiss * flops / done):>10.0%}"
            f"{(push_ids == faiss_ids).mean():>12.1%}"
        )
        summary.append(
            (f"projection {name}: FAISS vs push loop", f"{t_push / t_faiss:.1f}x", ">= 5x")
        )
    print("targets: speed-up >= 5x; faiss GFLOP/s >= 50% of matmul's")
    return summary


if __name__ == "__main__":
    main()
