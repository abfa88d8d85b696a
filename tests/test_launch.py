"""Launches our users run on clusters, on CPU processes over gloo: ProtoPNet under DDP, a sweep
objective on every rank, torchrun ranks agreeing on one run folder, SLURM sizing refused early."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from proto_lightning.cli import console_main
from proto_lightning.config import validate_overrides
from proto_lightning.errors import ConfigKeyError
from proto_lightning.models.protopnet_schedule import ProtoPNetSchedule
from proto_lightning.stages.protopnet import with_unused_parameters
from tests.helpers import fast_overrides, run_cli

pytestmark = pytest.mark.slow


def on_gloo(parts_root: Path, run: Path) -> list[str]:
    """Fast overrides on 2 gloo processes."""
    fast = [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]
    return [*fast, "trainer=ddp_cpu"]


def test_protopnet_trains_every_phase_on_two_gloo_processes(parts_root: Path, tmp_path: Path):
    """Warm, joint, push and last-layer epochs freeze parameter groups after DDP wrapped the model.

    Not compared with one process: each rank normalises BatchNorm over its own half batch and
    DistributedSampler orders the images otherwise, so the weights legitimately differ.
    """
    schedule = {"epochs": 3, "warm_epochs": 1, "push_start": 1, "push_every": 1}
    schedule_overrides = [f"model.schedule.{k}={v}" for k, v in schedule.items()]
    run = tmp_path / "run"
    done = run_cli(
        "protopnet",
        *on_gloo(parts_root, run),
        *schedule_overrides,
        "model.schedule.last_layer_iterations=1",
        "trainer.max_epochs=null",
        "model.prototypes_per_class=2",
        "model.prototype_dim=16",
    )
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    plan = ProtoPNetSchedule(**schedule, last_layer_iterations=1).plan()
    assert [s.phase for s in plan] == ["warm", "joint", "last", "joint", "last"]  # 2 pushes
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == len(plan) - 1
    push = state["protopnet_push"]["projection"]
    assert torch.equal(push["labels"], torch.arange(8) // 2)  # each on a patch of its own class
    with (run / "logs" / "metrics.csv").open() as f:
        logged = [row for row in csv.DictReader(f) if row.get("push/test_acc_after")]
    assert len(logged) == 2


def test_protopnet_asks_ddp_to_find_unused_parameters():
    assert with_unused_parameters("ddp") == "ddp_find_unused_parameters_true"
    target = {
        "_target_": "lightning.pytorch.strategies.DDPStrategy",
        "process_group_backend": "gloo",
    }
    assert with_unused_parameters(target) == {**target, "find_unused_parameters": True}
    assert with_unused_parameters("auto") == "auto"


def test_sweep_objective_is_returned_on_every_rank(parts_root: Path, tmp_path: Path, tiny_demo):
    """An Optuna trial under DDP: rank 1 used to get an empty evaluation and raise on the objective."""
    best = tiny_demo.artifacts["blackbox best checkpoint"]
    done = run_cli(
        "decompose",
        *on_gloo(parts_root, tmp_path / "run"),
        f"blackbox_ckpt={best}",
        "evaluate_after=true",
        "objective=Post-hoc PPN/consistency@scaled",
        "evaluation.methods=[posthoc]",
        "evaluation.faithfulness.images=2",
        "evaluation.faithfulness.steps=4",
        "evaluation.bootstrap.resamples=20",
        "evaluation.figures.images=1",
    )
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_ranks_started_a_second_apart_share_one_run_folder(
    parts_root: Path, tmp_path: Path
):
    """Two processes with torchrun's environment, rank 1 started 1.5 s after rank 0: Hydra's time
    stamp would name two folders; they must agree on rank 0's."""
    runs = tmp_path / "runs"
    args = [
        a for a in on_gloo(parts_root, tmp_path / "unused") if not a.startswith("hydra.run.dir=")
    ]
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "GROUP_RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "TORCHELASTIC_RUN_ID": "test",
        }
        command = [sys.executable, "-m", "proto_lightning", "blackbox", *args, f"paths.runs={runs}"]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
        time.sleep(1.5)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    folders = list((runs / "blackbox").iterdir())
    assert len(folders) == 1 and (folders[0] / "checkpoints" / "last.ckpt").is_file()


def test_slurm_launcher_refuses_devices_auto_before_submitting(capsys):
    with pytest.raises(ConfigKeyError, match="set trainer.devices=<GPUs per node>"):
        validate_overrides("blackbox", ["hydra/launcher=slurm", "trainer=ddp"])
    assert console_main(["blackbox", "-m", "hydra/launcher=slurm", "trainer=ddp"]) == 1
    assert "trainer.devices" in capsys.readouterr().err
    cfg = validate_overrides(
        "blackbox", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"]
    )
    assert cfg.hydra.launcher.gpus_per_node == cfg.hydra.launcher.tasks_per_node == 4


def test_a_sweep_is_checked_at_its_first_point_before_it_starts():
    with pytest.raises(ConfigKeyError, match="trainer.max_epochs"):
        validate_overrides("blackbox", ["trainer.max_epoch=1,2"])
