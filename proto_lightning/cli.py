"""`proto-lightning <stage> [key=value ...]`: one command line for every stage, configured by Hydra."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from proto_lightning.config import CONF_DIR, validate_overrides
from proto_lightning.errors import ConfigKeyError, ProtoLightningError
from proto_lightning.run_status import (
    configure_logging,
    mark_failed,
    mark_finished,
    quiet_libraries,
)
from proto_lightning.settings import did_you_mean

if TYPE_CHECKING:  # the stages (torch, Lightning) load only when one runs: help and --cfg are quick
    from proto_lightning.stages.common import StageResult

# stage name -> (module:function, one-line description); each has conf/<stage>.yaml
STAGES = {
    "blackbox": (
        "proto_lightning.stages.blackbox:run_blackbox",
        "fine-tune or resume the black-box classifier, then test it",
    ),
    "test": (
        "proto_lightning.stages.blackbox:run_test",
        "test accuracy of a black-box checkpoint (ckpt_path=...)",
    ),
    "decompose": (
        "proto_lightning.stages.decompose:run_decompose",
        "post-hoc part-prototype network of a black box (blackbox_ckpt=... or blackbox=<name> blackbox_weights=<file>)",
    ),
    "protopnet": (
        "proto_lightning.stages.protopnet:run_protopnet",
        "train the ProtoPNet baseline with the official schedule (push via FAISS)",
    ),
    "evaluate": (
        "proto_lightning.stages.evaluate:run_evaluate",
        "post-hoc PPN vs ProtoPNet vs Grad-CAM vs LIME: results.md/.csv, figures (from_run=... or paths)",
    ),
    "demo": (
        "proto_lightning.stages.demo:run_demo",
        "quick-start: every stage on the generated part dataset",
    ),
    "compare": (
        "proto_lightning.stages.compare:run_compare",
        "tables over many evaluate runs (seeds, sweeps): mean, sd, intervals, paired tests",
    ),
}
# stage modules with a `check_config(cfg)`, run before a run folder exists (they load torch)
STAGES_WITH_CHECKS = ("decompose", "evaluate", "compare")
TOOLS = {
    "make-dataset": "write the generated part dataset in the CUB-200-2011 layout",
    "runs": "list run folders (default runs/) as finished, failed (with the error) or unfinished",
}

USAGE = """usage: proto-lightning <stage> [key=value ...] [-m] [--cfg job] [--help]

stages (Hydra-configured from conf/<stage>.yaml; overrides as key=value, groups as group=option):
{stages}

tools:
{tools}

examples:
  proto-lightning make-dataset --out data/parts --classes 10 --per-class 100 --train-fraction 0.6 --size 96 --seed 0
  proto-lightning blackbox data=cub data.root=/data/CUB_200_2011 model/backbone=resnet50 trainer.max_epochs=30
  proto-lightning blackbox ckpt_path=runs/blackbox/<date>/checkpoints/last.ckpt   # resume
  proto-lightning test ckpt_path=runs/blackbox/<date>/checkpoints/last.ckpt
  proto-lightning decompose blackbox_ckpt=runs/blackbox/<date>/checkpoints/last.ckpt model.prototypes_per_class=3
  proto-lightning decompose blackbox=convnext_tiny blackbox_weights=my_convnext.pt data=folder data.root=/data/birds
  proto-lightning protopnet data=cub model/backbone=resnet50
  proto-lightning compare runs/demo-multirun/<date> 'runs/evaluate/*'   # seeds and sweep points
  proto-lightning blackbox --cfg job        # print the composed config
"""


def usage() -> str:
    """The top-level help text listing stages and tools."""
    stages = "\n".join(f"  {name:<13} {desc}" for name, (_, desc) in STAGES.items())
    tools = "\n".join(f"  {name:<13} {desc}" for name, desc in TOOLS.items())
    return USAGE.format(stages=stages, tools=tools)


def _make_dataset(argv: Sequence[str]) -> Path:
    from proto_lightning.data.generate import make_dataset

    parser = argparse.ArgumentParser(
        prog="proto-lightning make-dataset", description=TOOLS["make-dataset"]
    )
    parser.add_argument("--out", default="data/parts")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument(
        "--train-fraction", type=float, default=0.6, help="share of each class's images in train"
    )
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset folder whole"
    )
    args = parser.parse_args(argv)
    out = make_dataset(
        args.out,
        args.classes,
        args.per_class,
        args.size,
        args.seed,
        train_fraction=args.train_fraction,
        overwrite=args.overwrite,
    )
    print(f"wrote the generated part dataset to {out}")
    return out


HYDRA_VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--info",
    "-i",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def split_hydra_flags(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with their values) and the key=value overrides, each in the given order."""
    flags, plain = [], []
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("-"):
            plain.append(token)
            continue
        flags.append(token)
        if (
            token in HYDRA_VALUE_FLAGS
            and tokens
            and "=" not in tokens[0]
            and not tokens[0].startswith("-")
        ):
            flags.append(tokens.pop(0))
    return flags, plain


def sweep_objective(cfg: DictConfig, result: StageResult) -> float | None:
    """The metric a Hydra sweeper (e.g. optuna) optimises: `objective=<metric name>`, None when unset."""
    if cfg.get("objective") is None:
        return None
    if cfg.objective not in result.metrics:
        raise ConfigKeyError(
            f"objective={cfg.objective!r} is not a metric of the {cfg.stage} stage; it reports: "
            + ", ".join(sorted(result.metrics))
        )
    return float(result.metrics[cfg.objective])


def preflight(stage: str, cfg: DictConfig) -> None:
    """Checks of the composed config before any run folder exists: the stage's own
    (`check_config(cfg)` in its module: settings, named files) and the sweep objective."""
    if cfg.get("objective") is None and stage not in STAGES_WITH_CHECKS:
        return
    module = importlib.import_module(STAGES[stage][0].split(":")[0])
    check_objective(stage, cfg, module)
    getattr(module, "check_config", lambda cfg: None)(cfg)


def check_objective(stage: str, cfg: DictConfig, module) -> None:
    """Refuse `objective=` naming no metric the stage reports, before any work (stages that declare
    theirs: `reported_metrics(cfg)` in the stage's module)."""
    if cfg.get("objective") is None:
        return
    reported = getattr(module, "reported_metrics", None)
    if reported is not None and cfg.objective not in (known := reported(cfg)):
        raise ConfigKeyError(
            f"objective={cfg.objective!r} is not a metric of the {stage} stage with this config; "
            f"it reports: {', '.join(sorted(known))}"
        )


def user_error(err: BaseException) -> bool:
    """Whether `err` is a mistake of the user's (a bad setting, file or folder, a full disk), which the
    console reports in one line, rather than a defect of ours (a traceback)."""
    return isinstance(err, ProtoLightningError | FileNotFoundError | PermissionError) or (
        isinstance(err, OSError) and err.errno == errno.ENOSPC
    )


def one_line(err: BaseException) -> str:
    """The error as the console prints it: one line."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on the device writing {err.filename or 'the run'}: free space or point paths.runs elsewhere"
    return " ".join(str(err).split())


def show_traceback(overrides: Sequence[str]) -> bool:
    """`HYDRA_FULL_ERROR=1` or a `debug=` group: errors keep their traceback."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or any(
        o.startswith(("debug=", "+debug=")) for o in overrides
    )


def _run_stage(stage: str, overrides: list[str]) -> StageResult | list[StageResult] | None:
    """Run a stage through Hydra; return its result (a list for a multirun), or raise the first
    user error of a point after the run, with the run folder marked as failed."""
    module, function = STAGES[stage][0].split(":")
    hydra_flags = {  # flags that print instead of running; a multirun is checked at its first point
        "--cfg",
        "-c",
        "--help",
        "-h",
        "--hydra-help",
        "--info",
        "-i",
    }
    if not hydra_flags & set(overrides):
        preflight(stage, validate_overrides(stage, split_hydra_flags(overrides)[1]))
    results: list[StageResult] = []
    errors: list[BaseException] = []
    traceback = show_traceback(overrides)

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=stage)
    def _main(cfg: DictConfig) -> float | None:
        from lightning.pytorch.utilities import rank_zero_only

        started = time.time()
        task = getattr(importlib.import_module(module), function)
        quiet_libraries()
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN and cfg.group == cfg.stage:
            with open_dict(cfg):  # one W&B group per sweep, so the dashboard compares its runs
                cfg.group = f"{cfg.stage}-sweep-{Path(hydra_cfg.sweep.dir).name}"
        try:
            result = task(cfg)
        except Exception as err:
            mark_failed(Path(cfg.run_dir), one_line(err), started)
            if traceback or not user_error(err):
                raise
            errors.append(err)
            return None
        mark_finished(result)
        rank_zero_only(print)(result.summary())
        results.append(result)
        return sweep_objective(cfg, result)

    # Keep the stage in argv as a plain override so that Lightning's DDP launcher, which re-runs
    # this command line in each child process, re-enters the same stage; last, so that Hydra's
    # flags (-m, --cfg) still come before the overrides. The caller's argv comes back after.
    flags, plain = split_hydra_flags(overrides)
    saved_argv = sys.argv
    sys.argv = [sys.argv[0], *flags, *plain, f"stage={stage}"]
    try:
        _main()
    finally:
        sys.argv = saved_argv
    if len(results) > 1 and stage != "compare":
        compared = compare_multirun(results, overrides)
        results += [compared] if compared is not None else []
    if errors:
        raise errors[0]
    return results[0] if len(results) == 1 else (results or None)


def compare_multirun(results: list[StageResult], overrides: Sequence[str]) -> StageResult | None:
    """A multirun's own comparison, in `<sweep folder>/compare`, when its points wrote evaluations
    (results.csv); the logger overrides of the sweep carry over."""
    folders = [Path(r.run_dir) for r in results]
    if not any(any(folder.rglob("results.csv")) for folder in folders):
        return None
    sweep = Path(os.path.commonpath([f.resolve() for f in folders]))
    logging = [o for o in split_hydra_flags(overrides)[1] if o.startswith(("logger", "+logger"))]
    runs = ",".join(hydra_quoted(str(f)) for f in folders)
    return _run_stage(
        "compare",
        [f"runs=[{runs}]", f"hydra.run.dir={hydra_quoted(str(sweep / 'compare'))}", *logging],
    )


def hydra_quoted(text: str) -> str:
    """A string as a quoted Hydra override value."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def compare_arguments(rest: list[str]) -> list[str]:
    """`compare a b c key=value`: the positional folders/globs as the `runs=[...]` override."""
    flags, plain = split_hydra_flags(rest)
    positional = [t for t in plain if "=" not in t]
    if not positional:
        return rest
    runs = ",".join(hydra_quoted(t) for t in positional)
    return [*flags, *(t for t in plain if "=" in t), f"runs=[{runs}]"]


def _list_runs(argv: Sequence[str]) -> list:
    from proto_lightning.run_status import run_statuses

    parser = argparse.ArgumentParser(prog="proto-lightning runs", description=TOOLS["runs"])
    parser.add_argument("root", nargs="?", default="runs")
    statuses = run_statuses(Path(parser.parse_args(argv).root))
    for run in statuses:
        print(f"{run.status:<10} {run.folder}" + (f"  {run.detail}" if run.detail else ""))
    return statuses


def _dispatch(head: str, rest: list[str]) -> Any:
    if head == "compare":
        rest = compare_arguments(rest)
    if head == "make-dataset":
        return _make_dataset(rest)
    return _list_runs(rest) if head == "runs" else _run_stage(head, rest)


def main(argv: Sequence[str] | None = None) -> Any:
    """Run a stage or tool from Python: `main(["decompose", "blackbox_ckpt=bb.ckpt"])`.

    Returns the stage's `StageResult` (run folder, artifact paths, metrics; a list for a multirun,
    ending with its `compare` result when the points evaluated; the folder for make-dataset) and raises the typed error (`ProtoLightningError` and its kinds)
    instead of exiting; `sys.argv` is left as it was. With no `argv` it is the console script
    (`console_main`): the command line in, an exit code out.

    Example:
        >>> result = main(["decompose", "blackbox_ckpt=bb.ckpt"])  # doctest: +SKIP
        >>> result.artifacts["artifact"], result.metrics["test/agreement"]  # doctest: +SKIP
    """
    if argv is None:
        return console_main()
    configure_logging()
    argv = list(argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return None
    return _dispatch(*_stage_and_rest(argv))


def _stage_and_rest(argv: list[str]) -> tuple[str, list[str]]:
    """(stage or tool, its arguments); an unknown one raises `ConfigKeyError` with the closest."""
    head, rest = argv[0], argv[1:]
    relaunch = [a for a in argv if a.startswith("stage=")]
    if head not in STAGES and head not in TOOLS and relaunch:  # a DDP child re-running our line
        head = relaunch[0].split("=", 1)[1]
        rest = [a for a in argv if a != relaunch[0]]
    if head not in STAGES and head not in TOOLS:
        known = [*STAGES, *TOOLS]
        raise ConfigKeyError(f"unknown stage {head!r}.{did_you_mean(head, known)}")
    return head, rest


def console_main(argv: Sequence[str] | None = None) -> int:
    """The console script: exit code 0 on success; a user's mistake is one line `error: ...` on
    stderr and exit code 1 (2 for an unknown stage), its traceback kept with HYDRA_FULL_ERROR=1 or
    debug=...; a defect of ours keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    try:
        head, rest = _stage_and_rest(argv)
    except ConfigKeyError as err:
        print(f"{err}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        _dispatch(head, rest)
    except Exception as err:
        if not user_error(err) or show_traceback(rest):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
