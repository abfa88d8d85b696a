"""The layout promises of the architecture section: lower layers know no Hydra, functions fit a screen."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "proto_lightning"


def test_models_prototypes_metrics_and_data_import_nothing_from_hydra():
    code = (
        "import sys; sys.modules['hydra'] = None\n"  # any `import hydra...` now fails
        "import proto_lightning.models, proto_lightning.prototypes, proto_lightning.metrics, "
        "proto_lightning.data, proto_lightning.models.posthoc, proto_lightning.models.protopnet\n"
        "print(sorted(m for m, mod in sys.modules.items() if mod and m.startswith(('omegaconf', 'hydra'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_no_function_of_the_package_is_over_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines})")
    assert long == []
