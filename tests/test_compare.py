"""`compare`: statistics against scipy/numpy and hand-worked cases, its outputs, refusals as a user
sees them, and a multirun that compares itself."""

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from proto_lightning.cli import compare_arguments, main
from proto_lightning.comparison import compare_runs, write_comparison
from proto_lightning.errors import ConfigValueError, MissingArtifactError
from proto_lightning.evaluation.table import ResultRow, write_csv
from proto_lightning.metrics.bootstrap import Estimate
from proto_lightning.metrics.comparison import (
    bootstrap_indices,
    paired_bootstrap,
    paired_over_runs,
    summarise,
)
from tests.helpers import TINY_DEMO, fast_overrides

# hand-made runs: (seed, k, post-hoc consistency, ProtoPNet consistency)
RUNS = [(0, 2, 0.61, 0.30), (1, 2, 0.66, 0.21), (2, 2, 0.58, 0.33), (0, 3, 0.70, 0.30)]


def fake_run(folder: Path, seed: int, k: int, posthoc: float, protopnet: float, protocol="scaled"):
    """A results.csv and config.yaml as `evaluate` writes them (no per-image values)."""
    folder.mkdir(parents=True)
    rows = [
        ResultRow(
            "Post-hoc PPN", {"consistency": Estimate(posthoc, posthoc - 0.05, posthoc + 0.05)}
        ),
        ResultRow(
            "ProtoPNet", {"consistency": Estimate(protopnet, protopnet - 0.05, protopnet + 0.05)}
        ),
    ]
    write_csv(rows, folder / "results.csv", protocol)
    config = {"seed": seed, "model": {"prototypes_per_class": k}, "run_dir": str(folder)}
    config["environment"] = {"torch": "2.15.0"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture
def fake_runs(tmp_path):
    return [fake_run(tmp_path / "runs" / f"{i}", *run) for i, run in enumerate(RUNS)]


def test_summaries_and_paired_t_test_equal_scipy(fake_runs, tmp_path):
    comparison = compare_runs([str(tmp_path / "runs")])
    assert comparison.varying == ["model.prototypes_per_class"]  # seed and run_dir make no column
    k2 = next(g for g in comparison.groups if g.settings["model.prototypes_per_class"] == "2")
    posthoc = comparison.cell("consistency", "Post-hoc PPN", k2).summary
    x = np.array([r[2] for r in RUNS if r[1] == 2])
    y = np.array([r[3] for r in RUNS if r[1] == 2])
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (posthoc.mean, posthoc.sd, posthoc.n) == pytest.approx((x.mean(), x.std(ddof=1), 3))
    assert (posthoc.low, posthoc.high) == pytest.approx((low, high))
    diff = next(d for d in comparison.differences if d.group is k2).difference
    ci = stats.t.interval(0.95, 2, loc=(x - y).mean(), scale=stats.sem(x - y))
    assert diff.test == "paired t-test" and diff.n == 3
    assert diff.value == pytest.approx((x - y).mean())
    assert diff.p_value == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert (diff.low, diff.high) == pytest.approx(ci)
    # the k=3 column has one run: its value and its own bootstrap interval, no test over runs
    k3 = next(g for g in comparison.groups if g is not k2)
    one = comparison.cell("consistency", "Post-hoc PPN", k3).summary
    assert (one.mean, one.low, one.high, one.n) == pytest.approx((0.70, 0.65, 0.75, 1))


def test_summarise_one_run_and_zero_variance():
    assert np.isnan(summarise([0.5]).sd)
    same = paired_over_runs([0.5, 0.6], [0.4, 0.5])  # differences 0.1 and 0.1: no spread
    assert same.value == pytest.approx(0.1) and same.p_value == 0.0
    assert paired_over_runs([0.5, 0.6], [0.5, 0.6]).p_value == 1.0


def test_paired_bootstrap_worked_by_hand():
    # per-image values of two methods on two images; the statistic is the mean
    a, b = np.array([1.0, 0.0]), np.array([0.0, 3.0])
    rows = np.array([[0, 0], [0, 1], [1, 1], [1, 0]])
    # differences of the resampled means: 1 - 0, 0.5 - 1.5, 0 - 3, 0.5 - 1.5 = 1, -1, -3, -1
    d = paired_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), rows, confidence=0.5)
    assert d.value == -1.0  # 0.5 - 1.5 on both images
    # quantiles 0.25 and 0.75 of (-3, -1, -1, 1), linear: -3 + 0.75 * 2 and -1 + 0.25 * 2
    assert (d.low, d.high) == pytest.approx((-1.5, -0.5))
    # three of four differences <= 0, one >= 0: two-sided p = 2 * 1/4
    assert d.p_value == pytest.approx(0.5) and d.n == 2


def test_paired_bootstrap_converges_to_the_exhaustive_distribution():
    # two images: a resample's mean difference is 1 (p 1/4), -1 (1/2) or -3 (1/4), so P(d >= 0) = 1/4
    a, b = np.array([1.0, 0.0]), np.array([0.0, 3.0])
    d = paired_bootstrap(
        lambda i: a[i].mean(), lambda i: b[i].mean(), bootstrap_indices(2, 20000, seed=1)
    )
    assert d.p_value == pytest.approx(0.5, abs=0.03)
    assert (d.low, d.high) == (-3.0, 1.0)


def test_pairing_matters():
    """Two methods that differ by a constant on every image: the paired interval is that constant,
    however much the images vary (an unpaired resampling would give a wide one)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a - 0.1
    d = paired_bootstrap(
        lambda i: a[i].mean(), lambda i: b[i].mean(), bootstrap_indices(200, 500, seed=0)
    )
    assert d.low == pytest.approx(0.1) and d.high == pytest.approx(0.1) and d.p_value == 0.0
    assert d.p_text() == "< 0.002"  # none of the 500 resampled differences reaches 0


def balanced_tabulars(tex: str) -> list[list[list[str]]]:
    """Every tabular of a LaTeX file as rows of cells; asserts environments, rules and braces balance
    and that every row has as many cells as the column spec."""
    assert tex.count("{") == tex.count("}") - tex.count("\\}") + tex.count("\\{")
    tables = []
    for spec, body in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", tex, re.S):
        assert body.count("\\toprule") == body.count("\\midrule") == body.count("\\bottomrule") == 1
        for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
            body = body.replace(rule, "")
        rows = [r.strip() for r in body.split("\\\\") if r.strip()]
        cells = [re.split(r"(?<!\\)&", r) for r in rows]
        assert all(len(c) == len(spec) for c in cells), (spec, cells)
        tables.append(cells)
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == len(tables)
    return tables


def test_outputs_latex_bold_best_and_csv(fake_runs, tmp_path):
    comparison = compare_runs([str(tmp_path / "runs" / "*")])
    paths = write_comparison(comparison, tmp_path / "out", interval="sd")
    tex = paths["compare.tex"].read_text()
    (table,) = balanced_tabulars(tex)
    posthoc_row = next(r for r in table if r[0].strip() == "Post-hoc PPN")
    # mean and sd of 0.61, 0.66, 0.58: 0.6167 and sqrt((0.0067^2 + 0.0433^2 + 0.0367^2) / 2) = 0.0404
    assert "\\textbf{0.617 $\\pm$ 0.040}" in posthoc_row[1]
    assert "textbf" not in next(r for r in table if r[0].strip() == "ProtoPNet")[1]
    if shutil.which("pdflatex"):
        doc = tmp_path / "out" / "doc.tex"
        doc.write_text(
            "\\documentclass{article}\\usepackage{booktabs}\\begin{document}"
            "\\input{compare.tex}\\end{document}"
        )
        subprocess.run(
            ["pdflatex", "-halt-on-error", doc.name],
            cwd=doc.parent,
            check=True,
            capture_output=True,
        )
    with paths["compare.csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert {r["model.prototypes_per_class"] for r in rows} == {"2", "3"}
    assert "Post-hoc PPN − ProtoPNet" in paths["compare.md"].read_text()
    assert (tmp_path / "out" / "figures" / "consistency.png").is_file()
    assert "<table" in paths["report.html"].read_text()


def test_mixed_protocols_refused_in_one_line(fake_runs, tmp_path):
    fake_run(tmp_path / "runs" / "reference", 0, 2, 0.6, 0.3, protocol="reference")
    with pytest.raises(ConfigValueError, match="part protocol"):
        compare_runs([str(tmp_path / "runs")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proto_lightning",
            "compare",
            str(tmp_path / "runs"),
            f"paths.runs={tmp_path / 'out'}",
            "logger=csv",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: compare: runs differ in the part protocol"
    )
    assert not (tmp_path / "out").exists()  # refused before any folder is made


def test_missing_runs_refused(tmp_path):
    with pytest.raises(MissingArtifactError, match="matches no file"):
        compare_runs([str(tmp_path / "nothing*")])
    with pytest.raises(MissingArtifactError, match="no results.csv"):
        compare_runs([str(tmp_path)])


def test_positional_folders_become_the_runs_override():
    assert compare_arguments(["a", "runs/b*", "logger=csv"]) == [
        "logger=csv",
        "runs=['a','runs/b*']",
    ]


def test_evaluate_keeps_per_image_values_and_versions(tiny_demo):
    folder = tiny_demo.run_dir / "evaluate"
    raw = torch.load(folder / "per_image.pt", weights_only=True)  # data, never code
    with (folder / "results.csv").open() as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    for method, values in raw["methods"].items():
        accuracy = values["means"]["accuracy"].double().mean().item()
        assert accuracy == pytest.approx(float(table[method]["accuracy"]))
    assert set(raw["identity"]) == {"dataset", "test_split", "part_protocol"}
    from importlib.metadata import version

    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["environment"]["torch"] == version("torch")
    assert f"torch {version('torch')}" in (folder / "results.md").read_text()


@pytest.mark.slow
def test_two_posthoc_networks_and_a_multirun_that_compares_itself(tiny_demo, parts_root, tmp_path):
    """`posthoc=[k2, k3]` gives two rows; a 2-point multirun over that evaluation writes the
    comparison, a column per point, with the two networks' paired difference (identical networks:
    exactly 0, over the same resampled images)."""
    artifact = tiny_demo.run_dir / "decompose" / "posthoc.pt"
    for name in ("k2", "k3"):
        (tmp_path / name).mkdir()
        shutil.copy(artifact, tmp_path / name / "posthoc.pt")
    small = [o for o in TINY_DEMO if o.startswith("evaluation.") and "steps" not in o]
    data = fast_overrides(parts_root, tmp_path)[:-1]  # all but the run folder: a multirun's own
    results = main(
        [
            "evaluate",
            "-m",
            "evaluation.faithfulness.steps=6,8",
            f"from_run={tiny_demo.run_dir}",
            f"posthoc=[{tmp_path / 'k2' / 'posthoc.pt'},{tmp_path / 'k3' / 'posthoc.pt'}]",
            f"paths.runs={tmp_path / 'runs'}",
            *data,
            *small,
        ]
    )
    compared = results[-1]
    assert compared.stage == "compare" and compared.run_dir.name == "compare"
    text = (compared.run_dir / "compare.md").read_text()
    assert "| Post-hoc PPN (k2) | " in text
    assert "evaluation.faithfulness.steps=6 (1 run)" in text and "steps=8 (1 run)" in text
    with (compared.run_dir / "paired.csv").open() as f:
        pairs = [
            r
            for r in csv.DictReader(f)
            if r["baseline"] == "Post-hoc PPN (k3)" and r["metric"] != "seconds_per_image"
        ]
    assert pairs and all(float(r["difference"]) == 0.0 for r in pairs)


def test_stage_logs_the_wandb_table_and_names_columns_by_request(fake_runs, tmp_path):
    """The stage as a user runs it (default logger: W&B offline), with `compare.by`."""
    result = main(
        ["compare", str(tmp_path / "runs"), f"paths.runs={tmp_path / 'out'}", "compare.by=[seed]"]
    )
    assert (result.run_dir / "wandb").is_dir()
    with (result.run_dir / "compare.csv").open() as f:
        assert {r["seed"] for r in csv.DictReader(f)} == {"0", "1", "2"}
    assert "environment" in yaml.safe_load((result.run_dir / "config.yaml").read_text())


def test_posthoc_rows_are_named_by_where_their_paths_differ():
    from proto_lightning.evaluation.artifacts import posthoc_labels

    two = posthoc_labels(["runs/k2/decompose/posthoc.pt", "runs/k3/decompose/posthoc.pt"])
    assert list(two) == ["k2", "k3"]
    assert posthoc_labels({"k2": "a.pt"}) == {"k2": Path("a.pt")}
    assert posthoc_labels("a.pt") == {"": Path("a.pt")}
    with pytest.raises(ConfigValueError, match="twice"):
        posthoc_labels(["a.pt", "a.pt"])


def test_a_named_posthoc_row_is_a_known_objective():
    """A sweep may optimise one of several post-hoc networks' rows; an unknown row is refused."""
    import proto_lightning.stages.evaluate as evaluate
    from proto_lightning.cli import check_objective
    from proto_lightning.config import compose_config
    from proto_lightning.errors import ConfigKeyError

    posthoc = "posthoc=[runs/k2/posthoc.pt,runs/k3/posthoc.pt]"
    good = compose_config("evaluate", [posthoc, "objective='Post-hoc PPN (k3)/consistency'"])
    check_objective("evaluate", good, evaluate)
    bad = compose_config("evaluate", [posthoc, "objective='Post-hoc PPN (k4)/consistency'"])
    with pytest.raises(ConfigKeyError, match="not a metric"):
        check_objective("evaluate", bad, evaluate)
