"""Packaging hook: setup.cfg holds the metadata; this adds the top-level `conf/` to built packages as
`proto_lightning/conf`, so that a wheel (a non-editable install) carries its configs.

An editable install (`pip install -e .`, the Makefile's) reads `conf/` from the checkout instead.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    """`build_py` that also copies `conf/` into the built package."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            source = Path(__file__).resolve().parent / "conf"
            shutil.copytree(
                source, Path(self.build_lib) / "proto_lightning" / "conf", dirs_exist_ok=True
            )


setup(cmdclass={"build_py": BuildWithConfigs})
