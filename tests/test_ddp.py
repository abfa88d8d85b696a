"""DDP fit with 2 CPU processes over gloo, launched like a user would (the same code path as NCCL)."""

import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import fast_overrides


def test_ddp_cpu_fit_with_two_gloo_processes(parts_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    overrides = [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]
    command = [
        sys.executable,
        "-m",
        "proto_lightning",
        "blackbox",
        *overrides,
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 1
    # 12 train images, batch 8, 2 ranks -> each rank sees 6 -> 1 step per epoch
    assert state["global_step"] == 2
    assert done.stdout.count("run folder:") == 1  # only rank 0 reports
