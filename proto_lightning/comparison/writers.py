"""What `compare` writes: compare.md, compare.csv, paired.csv, compare.tex (booktabs), a figure per
metric and report.html."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from proto_lightning.comparison.analysis import Comparison, DifferenceRow, Group  # noqa: E402
from proto_lightning.evaluation.report import html_page, image_html  # noqa: E402
from proto_lightning.evaluation.table import METRICS  # noqa: E402
from proto_lightning.metrics.part_consistency import metric_label  # noqa: E402

INTERVALS = ("sd", "ci")  # how a LaTeX cell shows the spread: mean ± sd | mean [interval]


def header(metric: str, protocol: str) -> str:
    """A metric's title with its better direction; a part metric's names a protocol other than
    the reference's (`consistency@scaled`)."""
    name, better = METRICS[metric]
    name = metric_label(name, protocol)
    return f"{name} ({better} is better)" if better else name


def number(x: float) -> str:
    """Three decimals (three digits below 0.001), or `–` for a missing number."""
    if math.isnan(x):
        return "–"
    return f"{x:.3g}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"


def cell_text(comparison: Comparison, metric: str, method: str, group: Group) -> str:
    """mean ± sd [interval] (n), or the one run's value [its bootstrap interval]."""
    row = comparison.cell(metric, method, group)
    if row is None:
        return "n/a"
    s = row.summary
    if metric == "prototypes":
        return str(round(s.mean))
    spread = f" ± {number(s.sd)}" if s.n > 1 else ""
    interval = (
        "" if math.isnan(s.low) or s.low == s.high else f" [{number(s.low)}, {number(s.high)}]"
    )
    return f"{number(s.mean)}{spread}{interval}"


def difference_text(row: DifferenceRow) -> str:
    """+0.123 [0.100, 0.150], p = 0.004 (paired t-test, 3 runs)."""
    d = row.difference
    unit = "runs" if d.test == "paired t-test" else "images"
    interval = f"[{number(d.low)}, {number(d.high)}]"
    return f"{number_signed(d.value)} {interval}, p {d.p_text()} ({d.test}, {d.n} {unit})"


def number_signed(x: float) -> str:
    """`number` with its sign."""
    text = number(x)
    return text if text.startswith(("-", "–")) else "+" + text


def table_rows(comparison: Comparison, metric: str) -> tuple[list[str], list[list[str]]]:
    """One metric's table as text: the header, a row per method (a column per group), then a row
    per paired difference."""
    groups = comparison.groups
    heads = ["method"] + [f"{g.label} ({len(g.runs)} run{'s' * (len(g.runs) > 1)})" for g in groups]
    rows = []
    for method in comparison.methods():
        cells = [cell_text(comparison, metric, method, g) for g in groups]
        if any(c != "n/a" for c in cells):
            rows.append([method, *cells])
    diffs = {
        (d.method, d.baseline, id(d.group)): d for d in comparison.differences if d.metric == metric
    }
    for a, b in dict.fromkeys((a, b) for a, b, _ in diffs):
        cells = [
            difference_text(diffs[a, b, id(g)]) if (a, b, id(g)) in diffs else "n/a" for g in groups
        ]
        rows.append([f"{a} − {b}", *cells])
    return heads, rows


def markdown_table(comparison: Comparison, metric: str) -> list[str]:
    """One metric's section of compare.md."""
    heads, rows = table_rows(comparison, metric)
    lines = [f"### {header(metric, comparison.protocol)}", "", "| " + " | ".join(heads) + " |"]
    lines.append("|" + "---|" * len(heads))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def write_markdown(comparison: Comparison, path: Path) -> Path:
    """compare.md: a table per metric and the notes."""
    lines = ["# Comparison", ""]
    lines.append(
        "Cells: mean ± sd over runs [95% t-interval]; a column of one run shows its value [95% "
        "bootstrap interval over images]. Rows `A − B`: paired differences with their 95% interval "
        "and two-sided p-value (paired t-test over runs, or paired bootstrap over one run's images)."
    )
    lines.append("")
    for metric in comparison.metrics():
        lines += markdown_table(comparison, metric)
    lines += [f"- {note}" for note in comparison.notes]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(comparison: Comparison, summaries: Path, paired: Path) -> tuple[Path, Path]:
    """compare.csv (a row per metric, method and group) and paired.csv (a row per difference)."""
    with summaries.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["metric", "method", "group", *comparison.varying]
            + ["runs", "mean", "sd", "low", "high", "interval"]
        )
        for r in comparison.summaries:
            s = r.summary
            settings = [r.group.settings[k] for k in comparison.varying]
            writer.writerow(
                [r.metric, r.method, r.group.label, *settings, s.n, s.mean, s.sd, s.low, s.high]
                + [r.interval]
            )
    with paired.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["metric", "group", "method", "baseline", "difference", "low", "high", "p_value"]
            + ["n", "test"]
        )
        for r in comparison.differences:
            d = r.difference
            writer.writerow(
                [r.metric, r.group.label, r.method, r.baseline, d.value, d.low, d.high, d.p_value]
                + [d.n, d.test]
            )
    return summaries, paired


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped."""
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$")):
        text = text.replace(char, escaped)
    for char in "#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def best_methods(comparison: Comparison, metric: str, group: Group) -> set[str]:
    """The methods with the best mean of a ranked metric in a group (ties all best)."""
    better = METRICS[metric][1]
    means = {
        m: row.summary.mean
        for m in comparison.methods()
        if (row := comparison.cell(metric, m, group)) is not None
        and not math.isnan(row.summary.mean)
    }
    if not better or not means:
        return set()
    best = max(means.values()) if better == "higher" else min(means.values())
    return {m for m, v in means.items() if v == best}


def latex_cell(
    comparison: Comparison, metric: str, method: str, group: Group, interval: str, best: bool
) -> str:
    """A LaTeX cell: $mean \\pm sd$ or mean [low, high], bold when `best`."""
    row = comparison.cell(metric, method, group)
    if row is None:
        return "--"
    s = row.summary
    text = number(s.mean)
    if interval == "sd" and s.n > 1:
        text += f" $\\pm$ {s.sd:.3f}"
    elif not math.isnan(s.low) and s.low != s.high:
        text += f" [{s.low:.3f}, {s.high:.3f}]"
    return f"\\textbf{{{text}}}" if best else text


def write_latex(comparison: Comparison, path: Path, interval: str = "sd") -> Path:
    """compare.tex: a booktabs `tabular` per metric (methods by groups), the best value in bold."""
    parts = [
        "% proto-lightning compare: needs \\usepackage{booktabs}",
        f"% cells: mean {'± sd over runs' if interval == 'sd' else '[95% interval]'}; bold: best",
    ]
    groups = comparison.groups
    for metric in comparison.metrics():
        parts += [
            f"% {header(metric, comparison.protocol)}",
            "\\begin{tabular}{l" + "c" * len(groups) + "}",
            "\\toprule",
            "Method & " + " & ".join(latex_escape(g.label) for g in groups) + " \\\\",
            "\\midrule",
        ]
        best = {id(g): best_methods(comparison, metric, g) for g in groups}  # once per column
        for method in comparison.methods():
            cells = [
                latex_cell(comparison, metric, method, g, interval, method in best[id(g)])
                for g in groups
            ]
            if any(c != "--" for c in cells):
                parts.append(latex_escape(method) + " & " + " & ".join(cells) + " \\\\")
        parts += ["\\bottomrule", "\\end{tabular}", ""]
    path.write_text("\n".join(parts))
    return path


def metric_figure(comparison: Comparison, metric: str, path: Path) -> Path:
    """Each method's mean and interval per group, with every run's value as a dot."""
    groups, methods = comparison.groups, comparison.methods()
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(groups) * max(1, len(methods)) / 3, 3.2))
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        for i, group in enumerate(groups):
            row = comparison.cell(metric, method, group)
            if row is None:
                continue
            x = i + (j - (len(methods) - 1) / 2) * width
            s = row.summary
            runs = [
                r.results[method][metric].value
                for r in group.runs
                if metric in r.results.get(method, {})
            ]
            ax.scatter([x] * len(runs), runs, s=8, color=f"C{j}", alpha=0.5)
            if not math.isnan(s.low):
                ax.errorbar(
                    x,
                    s.mean,
                    yerr=[[max(0.0, s.mean - s.low)], [max(0.0, s.high - s.mean)]],
                    fmt="o",
                    color=f"C{j}",
                    capsize=3,
                    label=method if i == 0 else None,
                )
            else:
                ax.plot(x, s.mean, "o", color=f"C{j}", label=method if i == 0 else None)
    ax.set_xticks(range(len(groups)), [g.label for g in groups], fontsize=7)
    ax.set_ylabel(header(metric, comparison.protocol))
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def html_table(comparison: Comparison, metric: str) -> str:
    """One metric's table as HTML."""
    heads, rows = table_rows(comparison, metric)
    out = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in heads) + "</tr>"
    for row in rows:
        out += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    return f'<table data-metric="{metric}">{out}</table>'


def write_report(comparison: Comparison, path: Path, figures: list[Path], config_yaml: str) -> Path:
    """report.html: every metric's table and figure, the notes and the configuration."""
    parts = [
        "<p>Cells: mean ± sd over runs [95% interval]; rows A − B: paired differences with their "
        "95% interval and two-sided p-value.</p>"
    ]
    by_metric = {p.stem: p for p in figures}
    for metric in comparison.metrics():
        parts += [
            f"<h2>{html.escape(header(metric, comparison.protocol))}</h2>",
            html_table(comparison, metric),
        ]
        if metric in by_metric:
            parts.append(image_html(by_metric[metric]))
    parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in comparison.notes) + "</ul>")
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(config_yaml)}</pre>"]
    path.write_text(html_page("proto-lightning comparison", parts), encoding="utf-8")
    return path


def write_comparison(
    comparison: Comparison, folder: Path, interval: str = "sd", config_yaml: str = ""
) -> dict[str, Path]:
    """Write every output of a comparison into `folder`; returns them by name.

    Example:
        >>> paths = write_comparison(compare_runs(["runs/demo-multirun"]), Path("out"))  # doctest: +SKIP
        >>> paths["compare.md"].read_text()  # doctest: +SKIP
    """
    folder.mkdir(parents=True, exist_ok=True)
    figures = folder / "figures"
    figures.mkdir(exist_ok=True)
    paths = {"compare.md": write_markdown(comparison, folder / "compare.md")}
    paths["compare.csv"], paths["paired.csv"] = write_csv(
        comparison, folder / "compare.csv", folder / "paired.csv"
    )
    paths["compare.tex"] = write_latex(comparison, folder / "compare.tex", interval)
    drawn = [metric_figure(comparison, m, figures / f"{m}.png") for m in comparison.metrics()]
    paths["figures"] = figures
    paths["report.html"] = write_report(comparison, folder / "report.html", drawn, config_yaml)
    return paths
