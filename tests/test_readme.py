"""The README's first Python block (the facade) runs as written, in a fresh process and folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readmes_first_python_block_is_the_facade_and_runs_as_written(tmp_path):
    block = python_blocks(README.read_text())[0]
    assert "from proto_lightning import PostHocPPN" in block
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "posthoc.pt").is_file()
