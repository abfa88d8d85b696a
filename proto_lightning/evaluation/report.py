"""report.html: one self-contained page of an evaluation (figures embedded, no network access needed)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from proto_lightning.evaluation.table import METRICS, ResultRow, cell_text

# figures/ file name (or prefix) -> section, in page order; the rest go under "More figures"
SECTIONS = (
    ("deletion_insertion", "Deletion and insertion curves"),
    ("confusion_matrix", "The black box's confusion matrix"),
    ("posthoc_prototypes", "Post-hoc PPN: prototypes and their nearest training patches"),
    ("protopnet_prototypes", "ProtoPNet: prototypes and their pushed patches"),
    ("image_", "Each method on the same test images"),
)


def image_html(path: Path) -> str:
    """A PNG embedded in the page (base64), captioned with its file name."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
        f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
    )


def _table(rows: list[ResultRow]) -> str:
    """The results table; each number also as `data-value`, exactly as results.csv writes it."""
    head = "".join(
        f"<th>{html.escape(name)}{f' ({better})' if better else ''}</th>"
        for name, better in METRICS.values()
    )
    body = []
    for row in rows:
        cells = []
        for key in METRICS:
            estimate = row.values.get(key)
            value = "" if estimate is None else f' data-value="{estimate.value!r}"'
            cells.append(
                f'<td data-metric="{key}"{value}>{html.escape(cell_text(estimate, key))}</td>'
            )
        body.append(
            f'<tr data-method="{html.escape(row.method)}"><th>{html.escape(row.method)}</th>'
            + "".join(cells)
            + "</tr>"
        )
    return f'<table id="results"><tr><th>method</th>{head}</tr>{"".join(body)}</table>'


def write_report(
    path: Path,
    rows: list[ResultRow],
    notes: Sequence[str],
    figures: Sequence[Path],
    config_yaml: str,
    title: str,
) -> Path:
    """Write the page: table and notes, every figure (base64 PNG) by section, the configuration."""
    parts = [
        "<h2>Results</h2>",
        _table(rows),
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
        "<p>True-part localisation: share of (prototype, own-class test image) pairs whose heatmap "
        "peak lands within one feature cell of a visible true part; class-defining parts found: "
        "share of (class, defining part) pairs that some prototype of the class peaks on in at "
        "least 80% of the class's test images.</p>",
    ]
    remaining = list(figures)
    for prefix, heading in SECTIONS:
        shown = [p for p in remaining if p.stem.startswith(prefix)]
        if shown:
            parts += [f"<h2>{html.escape(heading)}</h2>", *map(image_html, shown)]
            remaining = [p for p in remaining if p not in shown]
    if remaining:
        parts += ["<h2>More figures</h2>", *map(image_html, remaining)]
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(config_yaml)}</pre>"]
    path.write_text(html_page(title, parts), encoding="utf-8")
    return path


def html_page(title: str, parts: Sequence[str]) -> str:
    """A self-contained page: the title as heading, then `parts` (HTML), in the reports' style."""
    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "img{max-width:100%}figure{margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    return "\n".join([*head, *parts, "</body></html>"])
