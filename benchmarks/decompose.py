"""Time split of the decompose stage on the quick-start data: feature collection / NMF + refinement / projection.

    python benchmarks/decompose.py --blackbox-ckpt runs/demo/<date>/blackbox/checkpoints/best-*.ckpt
    python benchmarks/decompose.py            # trains a 1-epoch quick-start black box first

Needs the generated dataset (`make dataset`, or --data).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from omegaconf import open_dict

from proto_lightning.config import compose_config
from proto_lightning.stages.blackbox import run_blackbox
from proto_lightning.stages.decompose import run_decompose


def stage(name: str, run_dir: Path, overrides: list[str]):
    cfg = compose_config(name, ["logger=csv", "callbacks.progress=null", "trainer=cpu", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
        del cfg["hydra"]
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blackbox-ckpt", type=Path)
    parser.add_argument("--data", default="data/parts")
    parser.add_argument("--prototypes-per-class", type=int, default=3)
    args = parser.parse_args()
    data = [f"data.root={args.data}"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.blackbox_ckpt
        if ckpt is None:
            trained = run_blackbox(
                stage(
                    "blackbox", Path(tmp) / "bb", [*data, "trainer.max_epochs=1", "run_test=false"]
                )
            )
            ckpt = trained.artifacts["best checkpoint"]
        start = time.perf_counter()
        result = run_decompose(
            stage(
                "decompose",
                Path(tmp) / "dec",
                [
                    *data,
                    f"blackbox_ckpt={ckpt}",
                    f"model.prototypes_per_class={args.prototypes_per_class}",
                ],
            )
        )
        total = time.perf_counter() - start
    parts = {k.split("/", 1)[1]: v for k, v in result.metrics.items() if k.startswith("time/")}
    print(f"decompose stage on {args.data}, k={args.prototypes_per_class}")
    print(f"{'part':<20}{'seconds':>10}{'share':>8}")
    for name, seconds in parts.items():
        print(f"{name:<20}{seconds:>10.2f}{seconds / total:>8.0%}")
    rest = total - sum(parts.values())
    print(f"{'test run + setup':<20}{rest:>10.2f}{rest / total:>8.0%}")
    print(f"{'total':<20}{total:>10.2f}")


if __name__ == "__main__":
    main()
