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
