"""Sweeps: Hydra multirun and optuna over decompose, the SLURM launcher config, W&B sweep files."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from proto_lightning.cli import STAGES
from proto_lightning.config import CONF_DIR, validate_overrides
from proto_lightning.stages.blackbox import run_blackbox
from tests.helpers import fast_overrides, run_cli, stage_cfg

pytestmark = pytest.mark.slow  # multi-process runs

SWEEPS = sorted((Path(__file__).parents[1] / "experiments" / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def blackbox_ckpt(parts_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:

    run = tmp_path_factory.mktemp("sweep_bb")
    cfg = stage_cfg("blackbox", parts_root, run, "run_test=false")
    return run_blackbox(cfg).artifacts["best checkpoint"]


def multirun(parts_root: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    base = [o for o in fast_overrides(parts_root, sweep_dir) if not o.startswith("hydra.run")]
    return run_cli("decompose", "-m", *base, f"hydra.sweep.dir={sweep_dir}", *overrides)


def test_multirun_grid_writes_one_network_per_point_in_one_group(
    parts_root, blackbox_ckpt, tmp_path
):
    sweep = tmp_path / "grid"
    multirun(
        parts_root,
        sweep,
        f"blackbox_ckpt={blackbox_ckpt}",
        "model.prototypes_per_class=2,3",
        "seed=0,1",
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    ks = sorted(
        torch.load(j / "posthoc.pt", weights_only=True)["prototypes"].shape[1] for j in jobs
    )
    assert ks == [2, 2, 3, 3]
    groups = {yaml.safe_load((j / "config.yaml").read_text())["group"] for j in jobs}
    assert groups == {f"decompose-sweep-{sweep.name}"}


def test_optuna_maximises_an_evaluation_metric(parts_root, blackbox_ckpt, tmp_path):
    sweep = tmp_path / "optuna"
    multirun(
        parts_root,
        sweep,
        f"blackbox_ckpt={blackbox_ckpt}",
        "sweep=decompose_optuna",
        "hydra.sweeper.n_trials=2",
        "evaluation.faithfulness.images=4",
        "evaluation.faithfulness.steps=4",
        "evaluation.bootstrap.resamples=20",
        "evaluation.figures.images=1",
    )
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # the objective (Post-hoc PPN consistency) of each trial, read from its own results table
    trials = []
    for trial in ("0", "1"):
        with (sweep / trial / "evaluate" / "results.csv").open() as f:
            rows = {row["method"]: row for row in csv.DictReader(f)}
        trials.append(float(rows["Post-hoc PPN"]["consistency"]))
    assert results["name"] == "optuna" and results["best_value"] == pytest.approx(max(trials))


def test_slurm_launcher_takes_nodes_and_gpus_from_the_trainer():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "blackbox",
            ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 8)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_wandb_sweep_files_call_the_cli_with_valid_keys(path: Path):
    sweep = yaml.safe_load(path.read_text())
    command = sweep["command"]
    assert (
        command[0] == "proto-lightning" and command[1] in STAGES and "${args_no_hyphens}" in command
    )
    fixed = [c for c in command[2:] if "=" in c and "${" not in c]
    validate_overrides(command[1], [*fixed, *(f"{key}=0" for key in sweep["parameters"])])
    assert sweep["metric"]["goal"] in ("maximize", "minimize")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_wandb_sweep_command_lines_resolve_through_the_cli(path: Path, tmp_path: Path):
    """The agent's command line, with the first value of every parameter, composed and resolved by
    the CLI itself (`--cfg job --resolve`): an interpolation omegaconf does not know fails here."""
    sweep = yaml.safe_load(path.read_text())
    chosen = [  # a listed value, or a distribution's lower end
        f"{key}={spec['values'][0] if 'values' in spec else spec['min']}"
        for key, spec in sweep["parameters"].items()
    ]
    args = [a for c in sweep["command"][1:] for a in (chosen if c == "${args_no_hyphens}" else [c])]
    ckpt = str(tmp_path / "bb.ckpt")
    env = {**os.environ, "BLACKBOX_CKPT": ckpt}
    done = subprocess.run(
        [sys.executable, "-m", "proto_lightning", *args, "--cfg", "job", "--resolve"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = yaml.safe_load(done.stdout)
    for choice in chosen:
        key, value = choice.split("=")
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert node == yaml.safe_load(value)
    if "blackbox_ckpt" in resolved:
        assert resolved["blackbox_ckpt"] == ckpt
