"""Many evaluations in one comparison: runs grouped by the settings that vary between them (seeds are
replicates), each metric summarised over a group's runs, and the post-hoc PPN's paired differences
with every other method (a paired bootstrap over one run's images; a paired t-test over runs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proto_lightning.comparison.runs import (
    EvaluatedRun,
    check_comparable,
    find_results,
    is_setting,
    read_run,
)
from proto_lightning.errors import ConfigKeyError
from proto_lightning.evaluation.table import METRICS
from proto_lightning.metrics.comparison import (
    Difference,
    Summary,
    bootstrap_indices,
    paired_bootstrap,
    paired_over_runs,
    summarise,
)

log = logging.getLogger(__name__)
POSTHOC = "Post-hoc PPN"  # rows whose name starts with it are the post-hoc networks compared
REPLICATE = "seed"  # the setting whose values are replicates of one point, not columns


@dataclass
class Group:
    """Runs that share every compared setting: a column of the tables."""

    settings: dict[str, str]  # varying setting -> its value in this group
    runs: list[EvaluatedRun]

    @property
    def label(self) -> str:
        """The column's header: its settings (`all runs` when nothing varies)."""
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or "all runs"


@dataclass
class SummaryRow:
    """A cell: one method's metric over a group's runs. With one run, the interval is that run's
    bootstrap interval over images (`interval` says which)."""

    metric: str
    method: str
    group: Group
    summary: Summary
    interval: str  # "t over runs" | "bootstrap over images"


@dataclass
class DifferenceRow:
    """The paired difference `method - baseline` of a metric in a group."""

    metric: str
    group: Group
    method: str
    baseline: str
    difference: Difference


@dataclass
class Comparison:
    """Everything `compare` writes: the groups, the varying settings, the cells and differences."""

    varying: list[str]
    groups: list[Group]
    protocol: str = "reference"  # the runs' part protocol (part metrics' names carry another)
    summaries: list[SummaryRow] = field(default_factory=list)
    differences: list[DifferenceRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> list[str]:
        """The compared metrics, in the results table's order."""
        present = {row.metric for row in self.summaries}
        return [key for key in METRICS if key in present]

    def methods(self) -> list[str]:
        """The compared methods, in their first run's order."""
        seen: dict[str, None] = {}
        for row in self.summaries:
            seen.setdefault(row.method, None)
        return list(seen)

    def cell(self, metric: str, method: str, group: Group) -> SummaryRow | None:
        """The summary of one method's metric in one group, None when it has none."""
        return next(
            (
                r
                for r in self.summaries
                if r.metric == metric and r.method == method and r.group is group
            ),
            None,
        )


def varying_settings(
    runs: list[EvaluatedRun], by: Sequence[str] | None, ignore: Sequence[str]
) -> list[str]:
    """The settings that make columns: `by` when given (each must be a setting of every run),
    else every setting whose value differs between runs, but `ignore` and the seed (with the
    settings that equal it in every run, as `data.seed: ${seed}` does)."""
    if by is not None:
        for key in by:
            missing = [str(r.folder) for r in runs if key not in r.config]
            if missing:
                raise ConfigKeyError(f"compare.by names {key!r}, which {missing[0]} does not set")
        return list(by)
    keys = sorted({k for run in runs for k in run.config if is_setting(k)})
    return [
        k
        for k in keys
        if k not in ignore
        and len({run.config.get(k) for run in runs}) > 1
        # the seed, and settings that follow it (data.seed: ${seed})
        and not all(run.config.get(k) == run.config.get(REPLICATE) for run in runs)
    ]


def group_runs(runs: list[EvaluatedRun], varying: list[str]) -> list[Group]:
    """Runs grouped by their values of the varying settings, in the runs' order."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        settings = {k: run.config.get(k, "unset") for k in varying}
        key = tuple(settings.values())
        groups.setdefault(key, Group(settings, [])).runs.append(run)
    return list(groups.values())


def summarise_group(group: Group, confidence: float) -> list[SummaryRow]:
    """Every method's every metric over the group's runs (runs lacking the metric left out)."""
    rows = []
    methods = dict.fromkeys(m for run in group.runs for m in run.results)
    for method in methods:
        for metric in METRICS:
            estimates = [
                run.results[method][metric]
                for run in group.runs
                if metric in run.results.get(method, {})
            ]
            if not estimates:
                continue
            summary = summarise([e.value for e in estimates], confidence)
            interval = "t over runs"
            if len(estimates) == 1:
                e = estimates[0]
                summary = Summary(e.value, float("nan"), e.low, e.high, 1)
                interval = "bootstrap over images"
            rows.append(SummaryRow(metric, method, group, summary, interval))
    return rows


def pairs(methods: list[str]) -> list[tuple[str, str]]:
    """(post-hoc network, other method) pairs; two post-hoc networks are paired once."""
    posthoc = [m for m in methods if m.startswith(POSTHOC)]
    return [
        (a, b)
        for i, a in enumerate(posthoc)
        for b in methods
        if b != a and not (b in posthoc and posthoc.index(b) < i)
    ]


def differences_over_runs(group: Group, confidence: float) -> list[DifferenceRow]:
    """Paired t-tests over the group's runs (paired within a run) of every ranked metric."""
    rows = []
    methods = list(dict.fromkeys(m for run in group.runs for m in run.results))
    for a, b in pairs(methods):
        for metric, (_, better) in METRICS.items():
            both = [
                (run.results[a][metric].value, run.results[b][metric].value)
                for run in group.runs
                if metric in run.results.get(a, {}) and metric in run.results.get(b, {})
            ]
            if better and len(both) >= 2:
                x, y = zip(*both, strict=True)
                rows.append(DifferenceRow(metric, group, a, b, paired_over_runs(x, y, confidence)))
    return rows


def differences_within_run(
    group: Group, resamples: int, confidence: float, seed: int
) -> list[DifferenceRow]:
    """Paired bootstraps over the images of the group's one run, for every ranked metric both
    methods were measured on (none when the run kept no per-image values)."""
    values = group.runs[0].values
    if values is None:
        return []
    rows = []
    for a, b in pairs(list(values.methods)):
        stats_a, stats_b = values.statistics(a), values.statistics(b)
        for metric, (_, better) in METRICS.items():
            if not better or metric not in stats_a or metric not in stats_b:
                continue
            (n, statistic_a), (_, statistic_b) = stats_a[metric], stats_b[metric]
            indices = bootstrap_indices(n, resamples, seed)
            difference = paired_bootstrap(statistic_a, statistic_b, indices, confidence)
            rows.append(DifferenceRow(metric, group, a, b, difference))
    return rows


def compare_runs(
    patterns: Sequence[str | Path],
    by: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare the `evaluate` runs at or below `patterns` (folders, multirun folders, globs).

    Args:
        patterns: run folders, folders holding many runs, or glob patterns.
        by: the settings that make columns; None: every config setting that differs between the
            runs, but the seed (seeds are replicates) and `ignore`.
        ignore: settings never to make a column of.
        resamples: the paired bootstrap's resamples (for a group of one run).
        confidence: the intervals' confidence level.
        seed: the paired bootstrap's seed.

    Returns:
        The `Comparison`: groups, per-metric summaries (mean, sd, interval) and paired differences
        of each post-hoc network against every other method. Runs that differ in the dataset, the
        test split or the part protocol are refused (`ConfigValueError`).

    Example:
        >>> comparison = compare_runs(["runs/demo-multirun/2026-12-05_08-00-00"])  # doctest: +SKIP
        >>> write_comparison(comparison, Path("runs/compare"))  # doctest: +SKIP
    """
    runs = [read_run(path) for path in find_results([str(p) for p in patterns])]
    check_comparable(runs)
    varying = varying_settings(runs, by, ignore)
    protocol = runs[0].identity.get("part_protocol", "reference")
    comparison = Comparison(varying, group_runs(runs, varying), protocol)
    for group in comparison.groups:
        comparison.summaries += summarise_group(group, confidence)
        if len(group.runs) >= 2:
            comparison.differences += differences_over_runs(group, confidence)
        else:
            found = differences_within_run(group, resamples, confidence, seed)
            comparison.differences += found
            if not found:
                comparison.notes.append(
                    f"{group.runs[0].folder}: no per-image values (per_image.pt), so no paired "
                    "test within the run; rerun evaluate to get one"
                )
    log.info("compared %d runs in %d groups", len(runs), len(comparison.groups))
    comparison.notes += run_notes(runs)
    return comparison


def run_notes(runs: list[EvaluatedRun]) -> list[str]:
    """What the reader needs besides the numbers: the runs, and environments that differ."""
    notes = [f"{len(runs)} runs: " + ", ".join(str(run.folder) for run in runs)]
    environments = {
        k: sorted({run.config.get(k, "unrecorded") for run in runs})
        for k in sorted({k for run in runs for k in run.config if k.startswith("environment.")})
    }
    differ = {k: v for k, v in environments.items() if len(v) > 1}
    same = {k: v[0] for k, v in environments.items() if len(v) == 1}
    if same:
        notes.append(
            "Environment: " + ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in same.items())
        )
    if differ:
        notes.append(
            "The runs' environments differ: "
            + "; ".join(f"{k.split('.', 1)[1]}: {', '.join(v)}" for k, v in differ.items())
        )
    return notes
