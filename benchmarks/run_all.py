"""Every benchmark in one go, then one table of the figures they are judged by (`make bench`).

python benchmarks/run_all.py            # full sizes
python benchmarks/run_all.py --quick    # small shapes, seconds to a minute (CI runs this)
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = (
    "projection.py",
    "faithfulness.py",
    "faithfulness_callback.py",
    "decompose_scale.py",
    "decompose_backbones.py",
)


def load(name: str):
    """Import a benchmark script by file name (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, HERE / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    """Run each script's `main`, collect its rows and print them as one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in SCRIPTS:
        print(f"\n== {name}")
        rows += load(name).main(["--quick"] if args.quick else [])
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'value':>10}  target")
    for measure, value, target in rows:
        print(f"{measure:<{width}}  {value:>10}  {target}")


if __name__ == "__main__":
    main()
