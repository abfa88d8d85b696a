"""The documentation holds up: every Python block of the README and docs/ runs (or says why it
cannot), every configuration key is described, and nothing cites a file the repository lacks."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUNNABLE = "# not runnable: "


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


BLOCKS = [
    pytest.param(block, id=f"{page.name}-{i}")
    for page in PAGES
    for i, block in enumerate(python_blocks(page.read_text()))
]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS)
def test_every_python_block_runs_or_says_why_not(block, tmp_path):
    if block.startswith(NOT_RUNNABLE):
        assert len(block.splitlines()[0]) > len(NOT_RUNNABLE) + 10, "give the reason"
        compile(block, "<block>", "exec")  # still valid Python
        return
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def config_reference():
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "docs" / "hooks" / "config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["config_reference"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_configuration_key_has_a_description():
    reference = config_reference()
    assert reference.undocumented() == []
    page = reference.reference()
    assert "`model.refinement.objective` | `paper` |" in page  # a key, its default, its text


def test_the_reference_finds_an_undescribed_key(tmp_path, monkeypatch):
    reference = config_reference()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.yaml").write_text("size: 3  # pixels\nnew_key: 1\nnested:\n  a: 2\n")
    monkeypatch.setattr(reference, "CONF", tmp_path)
    assert reference.undocumented() == ["data/x.yaml: data.new_key", "data/x.yaml: data.nested.a"]


def test_no_file_cites_the_missing_design_document():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    citing = [
        name
        for name in tracked
        if (ROOT / name).is_file()
        and name != "tests/test_docs.py"
        and "DESIGN" + ".md" in (ROOT / name).read_text(errors="ignore")
    ]
    assert citing == []


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:60])
    for thing in ("![", "make install", "make demo", "make test", "from proto_lightning import"):
        assert thing in first_screen, thing


@pytest.mark.parametrize(
    "module",
    [
        "proto_lightning.metrics.faithfulness",
        "proto_lightning.metrics.part_consistency",
        "proto_lightning.metrics.bootstrap",
        "proto_lightning.metrics.comparison",
        "proto_lightning.environment",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted > 0 and failed == 0
