"""Per-image values of an evaluation (`per_image.pt`): what each cell of the table is a statistic of.

`evaluate` computes its table from them and keeps them, so that `compare` can resample the same test
images for two methods (the paired bootstrap). The file holds tensors and plain values only, and is
read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from proto_lightning.atomic import atomic_torch_save
from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.evaluation.scores import PartCoverage, part_statistics
from proto_lightning.metrics.bootstrap import Estimate, bootstrap_estimate
from proto_lightning.models.files import read_torch_file

FORMAT = 1
# settings that make two evaluations incomparable: `compare` refuses to pool runs that differ in one
IDENTITY = ("dataset", "test_split", "part_protocol")


@dataclass
class MethodValues:
    """One method's per-image values: `means` are metrics that are the mean of a per-image value
    (accuracy: 0/1 per test image; deletion AUC per image of the heatmap subset); `coverage` gives
    the part metrics; `exact` are numbers measured once (head error, prototype count)."""

    means: dict[str, np.ndarray] = field(default_factory=dict)
    coverage: PartCoverage | None = None
    exact: dict[str, float] = field(default_factory=dict)


@dataclass
class RunValues:
    """An evaluation's per-image values, by method (row name), and what they are comparable under."""

    identity: dict[str, str]  # IDENTITY keys -> their value in this run
    num_classes: int
    threshold: float  # consistency's threshold
    defining: list[int] | None  # class-defining part ids, when the evaluation names them
    methods: dict[str, MethodValues] = field(default_factory=dict)

    def statistics(self, method: str) -> dict[str, tuple[int, Callable[[np.ndarray], float]]]:
        """metric -> (images it is measured on, statistic of their indices), for every resampled
        metric of `method` (not its exact ones)."""
        values = self.methods[method]
        out = {
            key: (len(v), lambda idx, v=v: float(np.mean(v[idx])))
            for key, v in values.means.items()
        }
        if values.coverage is not None:
            n = len(values.coverage.labels)
            parts = part_statistics(
                values.coverage, self.num_classes, self.threshold, self.defining
            )
            out.update({key: (n, statistic) for key, statistic in parts.items()})
        return out

    def estimates(self, method: str, **bootstrap: float) -> dict[str, Estimate]:
        """The table's cells of `method`: each metric on all images with its bootstrap interval."""
        out = {
            key: bootstrap_estimate(statistic, n, **bootstrap)
            for key, (n, statistic) in self.statistics(method).items()
        }
        out.update({key: Estimate(v, v, v) for key, v in self.methods[method].exact.items()})
        return out

    def save(self, path: Path) -> Path:
        """Write `per_image.pt` (tensors and plain values) atomically."""
        methods = {
            name: {
                "means": {k: torch.as_tensor(np.asarray(v)) for k, v in m.means.items()},
                "coverage": None
                if m.coverage is None
                else {f.name: getattr(m.coverage, f.name) for f in fields(PartCoverage)},
                "exact": dict(m.exact),
            }
            for name, m in self.methods.items()
        }
        payload = {
            "format": FORMAT,
            "identity": dict(self.identity),
            "num_classes": self.num_classes,
            "threshold": self.threshold,
            "defining": self.defining,
            "methods": methods,
        }
        return atomic_torch_save(path, payload)

    @classmethod
    def load(cls, path: Path) -> RunValues:
        """Read a `per_image.pt` as data; another format is refused naming the file."""
        raw = read_torch_file(path, "per-image values", "written by `proto-lightning evaluate`")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise IncompatibleWeightsError(
                f"{path} is not a per_image.pt of format {FORMAT}; rerun `proto-lightning evaluate`"
            )
        methods = {
            name: MethodValues(
                {k: v.numpy() for k, v in m["means"].items()},
                None if m["coverage"] is None else PartCoverage(**m["coverage"]),
                dict(m["exact"]),
            )
            for name, m in raw["methods"].items()
        }
        return cls(raw["identity"], raw["num_classes"], raw["threshold"], raw["defining"], methods)


def fingerprint(lines: list[str]) -> str:
    """A short stable hash of some lines (a split's image list, a dataset's class names)."""
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:12]


def data_identity(datamodule, part_protocol: str) -> dict[str, str]:
    """What makes two evaluations' numbers comparable: the dataset (its class names), the test
    split (its images, as paths under the root, and labels) and the part protocol."""
    records, test = datamodule.records, datamodule.test_set
    root = Path(datamodule.root).resolve()
    images = [
        f"{Path(os.path.relpath(Path(records.paths[row]).resolve(), root)).as_posix()}"
        f"\t{records.labels[row]}"
        for row in test.rows
    ]
    return {
        "dataset": f"{len(records.class_names)} classes {fingerprint(list(records.class_names))}",
        "test_split": f"{len(images)} images {fingerprint(images)}",
        "part_protocol": part_protocol,
    }
