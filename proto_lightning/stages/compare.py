"""The compare stage: many evaluations in one set of tables (`proto_lightning.comparison`)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from proto_lightning.comparison import compare_runs, write_comparison
from proto_lightning.comparison.runs import check_comparable, find_results, read_run
from proto_lightning.comparison.writers import INTERVALS
from proto_lightning.config import to_yaml
from proto_lightning.settings import require_choice
from proto_lightning.stages.common import StageResult, build, finish_logging, open_run

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """The runs to compare exist and are comparable, and the settings are known, before any
    folder is made (the CLI's check, before Hydra makes the run folder)."""
    require_choice(cfg.compare.latex_interval, INTERVALS, "compare.latex_interval")
    check_comparable([read_run(path) for path in find_results(list(cfg.runs))])


def run_compare(cfg: DictConfig) -> StageResult:
    """Read every evaluation under `runs`, compare them, write the tables, figures and report, and
    log one W&B table (`compare/summary`). The runs are read once, and refused (settings, missing
    or incomparable runs) before this stage writes anything."""
    require_choice(cfg.compare.latex_interval, INTERVALS, "compare.latex_interval")
    boot = cfg.evaluation.bootstrap
    comparison = compare_runs(
        list(cfg.runs),
        by=None if cfg.compare.by is None else list(cfg.compare.by),
        ignore=list(cfg.compare.ignore),
        resamples=boot.resamples,
        confidence=boot.confidence,
        seed=cfg.seed,
    )
    run_dir = open_run(cfg, unused=("data", "model", "callbacks", "trainer", "cuda"))
    paths = write_comparison(comparison, run_dir, cfg.compare.latex_interval, to_yaml(cfg))
    log_table(cfg, comparison)
    log.info("comparison:\n%s", paths["compare.md"].read_text())
    closing = f"open the report: {paths['report.html']}"
    return StageResult("compare", run_dir, paths, closing=closing)


def log_table(cfg: DictConfig, comparison) -> None:
    """One W&B table (`compare/summary`): a row per metric, method and group."""
    logger = build(cfg.logger)
    if hasattr(logger, "log_table"):
        columns = ["metric", "method", "group", "runs", "mean", "sd", "low", "high"]
        data = [
            [r.metric, r.method, r.group.label, r.summary.n, r.summary.mean, r.summary.sd]
            + [r.summary.low, r.summary.high]
            for r in comparison.summaries
        ]
        logger.log_table(key="compare/summary", columns=columns, data=data)
    finish_logging(logger)
