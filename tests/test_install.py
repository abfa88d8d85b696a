"""A non-editable install (a wheel) carries its configs and runs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_wheel_installs_with_its_configs_and_runs_elsewhere(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("proto_lightning-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies come from this environment (a path entry: its .pth files, among them the
    # editable install of this checkout, are not run); the package itself only from the wheel
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q"]
        + [str(wheel)],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROTO_LIGHTNING_CONF"}

    def run(*args: str) -> str:
        done = subprocess.run(
            [venv / "bin" / "proto-lightning", *args],
            capture_output=True,
            text=True,
            cwd=elsewhere,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    located = subprocess.run(
        [python, "-c", "import proto_lightning.config as c; print(c.__file__, c.CONF_DIR)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        check=True,
    ).stdout.split()
    assert all(str(venv) in p for p in located)  # the wheel's package and its own configs
    assert "max_epochs" in run("blackbox", "--cfg", "job")
    run("make-dataset", "--out", "parts", "--classes", "2", "--per-class", "6", "--size", "32")
    out = run(
        "blackbox",
        "data.root=parts",
        "data.image_size=32",
        "data.val_fraction=0.25",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "logger=csv",
        "callbacks.progress=null",
    )
    assert "test/acc" in out and (elsewhere / "runs" / "blackbox").is_dir()
