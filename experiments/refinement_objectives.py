"""Compare the refinement objectives (`model.refinement.objective`) on trained black boxes, one per seed.

For each black-box checkpoint (its seed) and objective: decompose, evaluate the post-hoc network
(conf/evaluation/quickstart.yaml) and measure its true-part localisation (`part_peaks.py`); then one
table of means and standard deviations over the seeds.

python experiments/refinement_objectives.py 0=runs/.../best.ckpt 1=... 2=... --data data/parts
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from pathlib import Path

from part_peaks import artifact_datamodule, mean_modal_share, part_hits

from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.prototypes.decomposition import OBJECTIVES

# results.csv columns of the post-hoc row, and how the table names them
COLUMNS = {
    "consistency": "consistency",
    "stability": "stability",
    "deletion_auc": "deletion AUC (lower)",
    "insertion_auc": "insertion AUC",
    "head_error": "relative head error",
    "accuracy": "top-1",
}


def decompose_and_evaluate(ckpt: str, seed: int, objective: str, data: str, run: Path) -> Path:
    """One `proto-lightning decompose ... evaluate_after=true` run into `run`; its artifact."""
    if not (run / "evaluate" / "results.csv").is_file():
        command = [
            str(Path(sys.executable).with_name("proto-lightning")),
            "decompose",
            f"blackbox_ckpt={ckpt}",
            "experiment=quickstart",
            f"data.root={data}",
            f"seed={seed}",
            f"model.refinement.objective={objective}",
            "evaluate_after=true",
            "evaluation=quickstart",
            "evaluation.methods=[posthoc]",
            "logger=csv",
            f"hydra.run.dir={run}",
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run / "posthoc.pt"


def measure(artifact: Path, data: str) -> dict[str, float]:
    """The post-hoc row of the run's results.csv, and the mean modal-part share of its prototypes."""
    with open(artifact.parent / "evaluate" / "results.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["method"] == "Post-hoc PPN")
    figures = {key: float(row[key]) for key in COLUMNS}
    model = PostHocPrototypeNetwork.load(artifact)
    hits, _ = part_hits(model, artifact_datamodule(model, data))
    figures["part_share"] = mean_modal_share(hits)
    return figures


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: one row per objective, mean +- standard deviation over the seeds."""
    names = {**COLUMNS, "part_share": "modal-part share"}
    lines = [
        "| objective | " + " | ".join(names.values()) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for objective, runs in results.items():
        cells = []
        for key in names:
            values = [r[key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3g} ± {spread:.2g}")
        lines.append(f"| {objective} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="SEED=CHECKPOINT, one per black box")
    parser.add_argument("--data", default="data/parts")
    parser.add_argument("--out", default="runs/refinement_objectives")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    args = parser.parse_args()
    out = Path(args.out)
    results: dict[str, list[dict[str, float]]] = {o: [] for o in args.objectives}
    for item in args.checkpoints:
        seed, ckpt = item.split("=", 1)
        for objective in args.objectives:
            run = out / f"seed{seed}" / objective
            artifact = decompose_and_evaluate(ckpt, int(seed), objective, args.data, run)
            results[objective].append(measure(artifact, args.data))
    report = table(results)
    (out / "objectives.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
