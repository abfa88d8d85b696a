"""Comparing many `evaluate` runs: tables with intervals over seeds and paired tests between methods.

from proto_lightning.comparison import compare_runs, write_comparison
comparison = compare_runs(["runs/demo-multirun/<stamp>"])
write_comparison(comparison, Path("runs/compare/mine"))
"""

from proto_lightning.comparison.analysis import Comparison, compare_runs
from proto_lightning.comparison.writers import write_comparison

__all__ = ["Comparison", "compare_runs", "write_comparison"]
