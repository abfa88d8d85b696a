"""report.html: parses, embeds every figure of figures/ byte for byte, and its numbers are results.csv's."""

import base64
import csv
from html.parser import HTMLParser

from proto_lightning.evaluation.table import METRICS


class ReportParser(HTMLParser):
    """The page's embedded images (alt -> bytes) and table cells ((method, metric) -> data-value)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, bytes] = {}
        self.cells: dict[tuple[str, str], str | None] = {}
        self.method: str | None = None
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in ("img", "meta"):
            self.open.append(tag)
        if tag == "img":
            header, data = attrs["src"].split(",", 1)
            assert header == "data:image/png;base64"  # embedded: no file or network reference
            self.images[attrs["alt"]] = base64.b64decode(data)
        if tag == "tr" and "data-method" in attrs:
            self.method = attrs["data-method"]
        if tag == "td" and "data-metric" in attrs:
            self.cells[self.method, attrs["data-metric"]] = attrs.get("data-value")

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"


def test_report_embeds_every_figure_and_the_csv_numbers(tiny_demo):
    evaluate = tiny_demo.run_dir / "evaluate"
    parser = ReportParser()
    parser.feed((evaluate / "report.html").read_text(encoding="utf-8"))
    parser.close()
    assert parser.open == []  # every element closed
    figures = sorted((evaluate / "figures").glob("*.png"))
    assert {p.name for p in figures} == set(parser.images)
    assert "confusion_matrix.png" in parser.images
    for path in figures:
        assert parser.images[path.name] == path.read_bytes()
    with (evaluate / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in METRICS:
            shown = parser.cells[row["method"], key]
            if row[key] == "":
                assert shown is None
            else:
                assert float(shown) == float(row[key]), (row["method"], key)
    assert "run_dir" in (evaluate / "report.html").read_text()  # the configuration is on the page


def test_the_demo_ends_by_naming_the_report(tiny_demo):
    last = tiny_demo.summary().splitlines()[-1]
    assert last == f"open the report: {tiny_demo.run_dir / 'evaluate' / 'report.html'}"


def test_a_negative_term_is_labelled_as_counting_against(tmp_path, monkeypatch):
    """Every figure names a term that lowers the logit as counting against the class: its caption
    (`term_caption`), and its "looks like" panel; explanations say which terms are against."""
    import numpy as np
    import torch

    from proto_lightning.evaluation import figures
    from proto_lightning.evaluation.figures import PrototypeTerm, explanation_figure
    from proto_lightning.prototypes.network import PrototypeExplanation, term_caption

    assert term_caption(2, 0.314) == "p2: +0.31 for"
    assert term_caption(0, -0.12) == "p0: -0.12 against"
    assert term_caption(1, 0.0) == "p1: +0.00 for"  # a zero term lowers nothing
    titles = []
    show = figures._show
    monkeypatch.setattr(
        figures,
        "_show",
        lambda ax, image, heatmap=None, title="", size=7: (
            titles.append(title),
            show(ax, image, heatmap, title, size),
        ),
    )
    image, patch = np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    terms = [
        PrototypeTerm(np.ones((8, 8)), None, patch, term_caption(1, 0.5)),
        PrototypeTerm(np.ones((8, 8)), None, patch, term_caption(0, -0.2)),
    ]
    import matplotlib.figure

    suptitles = []
    suptitle = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "suptitle",
        lambda fig, text, **kw: (suptitles.append(text), suptitle(fig, text, **kw))[1],
    )
    explanation_figure(tmp_path / "f.png", image, "test image 3", {}, [], terms, {})
    assert suptitles == ["test image 3"]  # the image's title, not the last panel's caption
    assert "post-hoc PPN: p0: -0.20 against" in titles
    assert titles.count("looks like\n(counts against)") == 1 and titles.count("looks like") == 1
    explained = PrototypeExplanation(
        0, 1.0, torch.tensor([1, 0]), torch.tensor([0.5, -0.2]), None, None, [{}, {}]
    )
    assert explained.against.tolist() == [False, True]
    zero = PrototypeExplanation(0, 0.0, torch.tensor([0]), torch.tensor([0.0]), None, None, [{}])
    assert zero.against.tolist() == [False] and zero.terms() == ["p0: +0.00 for"]
    assert explained.terms() == ["p1: +0.50 for", "p0: -0.20 against"]
