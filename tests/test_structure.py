"""The layout promises of the architecture section: lower layers know no Hydra, functions fit a screen."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "proto_lightning"


def loaded_by(statements: str, packages: tuple[str, ...]) -> list[str]:
    """Which of `packages` a fresh interpreter has imported after running `statements`."""
    found = "{m.split('.')[0] for m, module in sys.modules.items() if module}"
    code = f"import sys\n{statements}\nprint(sorted({found} & {set(packages)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return ast.literal_eval(done.stdout.strip())  # a printed list of names


def test_models_prototypes_metrics_and_data_import_nothing_from_hydra():
    statements = (
        "sys.modules['hydra'] = None\n"  # any `import hydra...` now fails
        "import proto_lightning.models, proto_lightning.prototypes, proto_lightning.metrics, "
        "proto_lightning.data, proto_lightning.models.posthoc, proto_lightning.models.protopnet"
    )
    assert loaded_by(statements, ("omegaconf", "hydra")) == []


def test_the_facade_loads_neither_hydra_nor_wandb_nor_lightning():
    heavy = ("hydra", "wandb", "lightning", "pytorch_lightning", "omegaconf", "faiss")
    assert loaded_by("import proto_lightning\nproto_lightning.PostHocPPN", heavy) == []


def test_no_function_of_the_package_is_over_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines})")
    assert long == []
