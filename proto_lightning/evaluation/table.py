"""The results table: one row per method, each metric as a value with its 95% bootstrap interval."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from proto_lightning.metrics.bootstrap import Estimate
from proto_lightning.metrics.part_consistency import metric_label

# column -> (header, better direction), in table order
METRICS = {
    "accuracy": ("top-1 accuracy", "higher"),
    "agreement": ("agreement with black box", "higher"),
    "head_error": ("relative head error", "lower"),
    "deletion_auc": ("deletion AUC", "lower"),
    "insertion_auc": ("insertion AUC", "higher"),
    "consistency": ("consistency", "higher"),
    "stability": ("stability", "higher"),
    "part_localisation": ("true-part localisation", "higher"),
    "defining_parts": ("class-defining parts found", "higher"),
    "prototypes": ("prototypes", ""),
    "seconds_per_image": ("seconds per image to explain", "lower"),
}


@dataclass
class ResultRow:
    """One method's metrics; a metric it has no answer for is missing (not applicable)."""

    method: str
    values: dict[str, Estimate] = field(default_factory=dict)

    def flat(self) -> dict[str, float | str | None]:
        """The row as CSV/W&B columns: metric, metric_low, metric_high (None, an empty CSV cell, when not applicable)."""
        out: dict[str, float | str | None] = {"method": self.method}
        for key in METRICS:
            estimate = self.values.get(key)
            for suffix, attr in (("", "value"), ("_low", "low"), ("_high", "high")):
                out[key + suffix] = getattr(estimate, attr) if estimate is not None else None
        return out


def columns() -> list[str]:
    """CSV / W&B table columns, the same for every run so dashboards line them up; `part_protocol`
    says under which protocol consistency and stability were measured."""
    return (
        ["method"] + [key + s for key in METRICS for s in ("", "_low", "_high")] + ["part_protocol"]
    )


def write_csv(rows: list[ResultRow], path: Path, protocol: str) -> Path:
    """results.csv: one row per method, each naming the part protocol."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns())
        writer.writeheader()
        writer.writerows({**row.flat(), "part_protocol": protocol} for row in rows)
    return path


def cell_text(estimate: Estimate | None, key: str) -> str:
    """A table cell: value [95% interval], the value alone when exact, n/a when not applicable."""
    if estimate is None:
        return "n/a"
    if key == "prototypes":
        return str(int(estimate.value))
    if estimate.low == estimate.high:
        return f"{estimate.value:.4g}"
    return f"{estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def write_markdown(rows: list[ResultRow], path: Path, notes: list[str], protocol: str) -> Path:
    """results.md: the table (value [95% interval]) and the notes that say how it was measured; the
    part metrics' headers name a protocol other than the reference's (`metric_label`)."""
    headers = ["method"] + [
        f"{metric_label(name, protocol)} ({better})" if better else name
        for name, better in METRICS.values()
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row.method] + [cell_text(row.values.get(key), key) for key in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text(
        "# Results\n\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    )
    return path
