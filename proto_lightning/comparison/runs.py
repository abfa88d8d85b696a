"""Finding and reading evaluated runs: each `results.csv` of `evaluate`, its config and per-image values."""

from __future__ import annotations

import csv
import glob
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from proto_lightning.errors import ConfigValueError, MissingArtifactError
from proto_lightning.evaluation.per_image import IDENTITY, RunValues
from proto_lightning.evaluation.table import METRICS
from proto_lightning.metrics.bootstrap import Estimate

# config leaves that never make a column: where files are and how a run is logged, not what it
# measures; a key ending in one of SUFFIXES is a path (checkpoints, artifacts, data roots)
IGNORED_PREFIXES = ("environment.", "logger.", "paths.", "hydra.", "cuda.")
IGNORED_KEYS = ("run_dir", "group", "stage", "from_run", "posthoc", "objective", "trust_file")
IGNORED_SUFFIXES = (
    "_ckpt",
    "_artifact",
    "init_from_blackbox",
    "root",
    "ckpt_path",
    "weights",
    "_dir",
    "dirpath",
)


@dataclass
class EvaluatedRun:
    """One `evaluate` run: its table (method -> metric -> estimate), its flattened config and what
    makes it comparable (`IDENTITY`)."""

    folder: Path
    results: dict[str, dict[str, Estimate]]
    protocol: str  # the part protocol results.csv names
    config: dict[str, str] = field(default_factory=dict)
    values: RunValues | None = None  # per_image.pt, absent for runs of older versions

    @property
    def identity(self) -> dict[str, str]:
        """per_image.pt's identity; only the part protocol for a run without per-image values."""
        return (
            dict(self.values.identity)
            if self.values is not None
            else {"part_protocol": self.protocol}
        )


def find_results(patterns: list[str]) -> list[Path]:
    """Every `results.csv` at or below the given folders or glob patterns (sorted, each once); a
    pattern matching nothing, or no results.csv at all, is refused with the pattern."""
    if not patterns:
        raise ConfigValueError(
            "compare needs evaluate run folders: proto-lightning compare <folder or glob> ..."
        )
    found: set[Path] = set()
    for pattern in patterns:
        matches = [Path(m) for m in sorted(glob.glob(str(pattern), recursive=True))]
        if not matches:
            raise MissingArtifactError(f"compare: {pattern} matches no file or folder")
        for match in matches:
            if match.is_file() and match.name == "results.csv":
                found.add(match.resolve())
            elif match.is_dir():
                found.update(p.resolve() for p in match.rglob("results.csv"))
    if not found:
        raise MissingArtifactError(
            f"compare: no results.csv under {', '.join(map(str, patterns))}; "
            "run `proto-lightning evaluate` (or the demo) there first"
        )
    return sorted(found)


def read_results(path: Path) -> tuple[dict[str, dict[str, Estimate]], str]:
    """A results.csv as method -> metric -> estimate (empty cells: not applicable), and its part
    protocol; a file without the table's columns is refused naming it."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "method" not in rows[0] or "part_protocol" not in rows[0]:
        raise ConfigValueError(f"{path} is not a results.csv of `proto-lightning evaluate`")
    table = {}
    for row in rows:
        table[row["method"]] = {
            key: Estimate(float(row[key]), float(row[key + "_low"]), float(row[key + "_high"]))
            for key in METRICS
            if row.get(key) not in (None, "")
        }
    return table, rows[0]["part_protocol"]


def flatten(node: object, prefix: str = "") -> dict[str, str]:
    """Nested config -> {dotted key: value as text} (a list is one value)."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(node)}


def is_setting(key: str) -> bool:
    """Whether a config key can tell runs apart (not a path, a log or an environment detail)."""
    last = key.rsplit(".", 1)[-1]
    return not (
        key.startswith(IGNORED_PREFIXES)
        or key in IGNORED_KEYS
        or key.endswith(IGNORED_SUFFIXES)
        or last in IGNORED_KEYS
    )


def read_run(results_csv: Path) -> EvaluatedRun:
    """The run of a results.csv: table, config (config.yaml beside it, when there) and per-image
    values (per_image.pt beside it, when there), each read once."""
    folder = results_csv.parent
    results, protocol = read_results(results_csv)
    config_file = folder / "config.yaml"
    config = flatten(yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    per_image = folder / "per_image.pt"
    values = RunValues.load(per_image) if per_image.is_file() else None
    return EvaluatedRun(folder, results, protocol, config, values)


def check_comparable(runs: list[EvaluatedRun]) -> None:
    """Refuse runs that differ in the dataset, the test split or the part protocol, naming the
    setting and two runs that differ in it."""
    for key in IDENTITY:
        seen: dict[str, Path] = {}
        for run in runs:
            if key in run.identity:
                seen.setdefault(run.identity[key], run.folder)
        if len(seen) > 1:
            (a, first), (b, second) = list(seen.items())[:2]
            raise ConfigValueError(
                f"compare: runs differ in the {key.replace('_', ' ')} ({first}: {a}; {second}: {b}), "
                "so their numbers are not comparable; compare each kind separately"
            )
