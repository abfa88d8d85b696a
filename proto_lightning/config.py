"""Hydra configuration: where `conf/` is, composing it, and failing loudly on unknown keys."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from proto_lightning.errors import ConfigKeyError
from proto_lightning.run_stamp import run_stamp
from proto_lightning.settings import did_you_mean


def slurm_gpus(devices: Any) -> int:
    """`trainer.devices` as the GPUs (one task each) per node a SLURM job asks for: a count.

    SLURM must be told the count at submission, on a login node that cannot see the compute
    nodes' GPUs, so `auto` or -1 cannot be resolved there: refused with the key to set.
    """
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)  # a list of device indices
    if str(devices).isdigit() and int(devices) > 0:
        return int(devices)
    raise ConfigKeyError(
        f"hydra/launcher=slurm sizes the job from trainer.devices, which is {devices!r}: set "
        "trainer.devices=<GPUs per node> (e.g. trainer.devices=8), since SLURM needs the count "
        "before the job starts"
    )


# ${run_stamp:<strftime format>}: the run folder's time stamp, one for all ranks of a launch
OmegaConf.register_new_resolver("run_stamp", run_stamp, replace=True)
# ${slurm_gpus:${trainer.devices}}: GPUs and tasks per node of a SLURM job (conf/hydra/launcher/slurm.yaml)
OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus, replace=True)


def _conf_dir() -> Path:
    """PROTO_LIGHTNING_CONF, else the configs an installed wheel carries (proto_lightning/conf),
    else the checkout's top-level conf/ (an editable install)."""
    if "PROTO_LIGHTNING_CONF" in os.environ:
        return Path(os.environ["PROTO_LIGHTNING_CONF"])
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf"


CONF_DIR = _conf_dir()


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with overrides, outside a Hydra run (tests, notebooks)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=True)


def _leaf_keys(node: object, prefix: str = "") -> Iterator[str]:
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            yield path
            yield from _leaf_keys(node._get_node(key), f"{path}.")


def first_point(overrides: Sequence[str]) -> list[str]:
    """A multirun's overrides reduced to its first point (`a=1,2` -> `a=1`), to check before a sweep
    starts; a sweep over an interval (Optuna's `interval(...)`) is left to the sweeper."""
    point = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not override.is_sweep_override():
            point.append(override.input_line)
        elif not override.is_interval_sweep():
            first = next(iter(override.sweep_string_iterator()))
            point.append(f"{override.get_key_element()}={first}")
    return point


def validate_overrides(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Check a command line before any work and return its composed config (a sweep at its first
    point): unknown keys (with the closest ones), unknown group options (with the existing ones),
    values of the wrong type, loggers whose optional package is missing, and launcher settings that
    cannot be resolved (e.g. SLURM with `trainer.devices=auto`) each get a one-line error."""
    _check_optional_groups(overrides)
    overrides = first_point(overrides)
    config = _compose_known(config_name, overrides)
    _check_value_types(config_name, overrides, config)
    _check_optional_packages(config)
    _check_launcher(config)
    return config


# groups listed as `optional` in conf/common.yaml: Hydra skips a missing option of them silently
OPTIONAL_GROUPS = ("experiment", "experiment_model")


def _check_optional_groups(overrides: Sequence[str]) -> None:
    """Refuse an option of an optional group that does not exist (a typo would run the defaults)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    for override in parsed:
        group = override.get_key_element().lstrip("+~")
        if group not in OPTIONAL_GROUPS or override.value() is None:
            continue
        options = sorted(p.stem for p in (_conf_dir() / group).glob("*.yaml"))
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [str(override.value())]
        )
        for value in values:  # every point of a sweep, not only the first
            if value not in options:
                raise ConfigKeyError(
                    f"unknown {group} {value!r}.{did_you_mean(value, options)} "
                    f"{group.capitalize()}s (conf/{group}/): {', '.join(options)}"
                )


def _unknown_option(message: str) -> str:
    """Hydra's "Could not find 'group/option' ... Available options in 'group': a b c" as one line
    with the closest options; any other composition message as it is, on one line."""
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    available = re.search(
        r"Available options in '[^']+':\s*(.*?)(?:\s*Config search path|$)", message, re.S
    )
    if missing is None or available is None:
        return " ".join(message.split())
    group, option = missing.groups()
    options = available.group(1).split()
    return (
        f"unknown {group} option {option!r}.{did_you_mean(option, options)} "
        f"Options (conf/{group}/): {', '.join(options)}"
    )


def _compose_known(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose, turning an unknown key or group option into a `ConfigKeyError` that says what exists."""
    try:
        return compose_config(config_name, overrides)
    except ConfigCompositionException as err:
        bad = _unknown_key(err)
        if bad is None:  # e.g. model/backbone=resnet5: Hydra's own message lists the options
            raise ConfigKeyError(_unknown_option(str(err))) from None
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        known_good = [o.input_line for o in parsed if o.get_key_element() != bad]
        try:
            config = compose_config(config_name, known_good)
        except ConfigCompositionException:
            config = compose_config(config_name)
        keys = [k for k in _leaf_keys(config) if not k.startswith("hydra")]
        raise ConfigKeyError(
            f"unknown config key '{bad}' for stage '{config_name}'.{did_you_mean(bad, keys)} "
            f"Add a new key with '+{bad}=...' if you really mean to; "
            f"`proto-lightning {config_name} --cfg job` prints every key."
        ) from err


def _check_value_types(config_name: str, overrides: list[str], config: DictConfig) -> None:
    """A value given for a key whose default is a number (or a boolean) must be one too (null aside):
    `trainer.max_epochs=abc` fails here, not after the run folder, data and W&B run exist."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values = [
        o
        for o in parsed
        if not o.is_add()
        and not o.is_delete()
        and "/" not in o.key_or_group
        and not isinstance(OmegaConf.select(config, o.key_or_group), DictConfig)
    ]
    defaults = compose_config(config_name, [o.input_line for o in parsed if o not in values])
    for o in values:
        default = OmegaConf.select(defaults, o.key_or_group, default=None)
        given = OmegaConf.select(config, o.key_or_group)
        if not isinstance(default, int | float) or given is None:
            continue
        if isinstance(default, bool):
            fits, kind = isinstance(given, bool), "true or false"
        else:
            fits, kind = isinstance(given, int | float) and not isinstance(given, bool), "a number"
        if not fits:
            raise ConfigKeyError(
                f"{o.key_or_group}={given!r}: expected {kind} (the default is {default!r})"
            )


# optional packages some config choices need: logger target suffix -> (importable modules, extra)
OPTIONAL_LOGGERS = {"TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard")}


def _check_optional_packages(config: DictConfig) -> None:
    """A logger whose package is an optional extra, when that package is not installed."""
    target = str(OmegaConf.select(config, "logger._target_", default="") or "")
    for suffix, (modules, extra) in OPTIONAL_LOGGERS.items():
        if target.endswith(suffix) and not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigKeyError(
                f'this logger needs the optional package {modules[0]}: pip install -e ".[{extra}]" '
                f"(or pip install {modules[0]})"
            )


def _check_launcher(config: DictConfig) -> None:
    """The launcher sizes the jobs at submission: resolve its settings now, not after a sweep starts."""
    if config.hydra.get("launcher") is None:
        return
    try:
        OmegaConf.to_container(config.hydra.launcher, resolve=True)
    except InterpolationResolutionError as err:
        cause = _cause_of_type(err, ConfigKeyError)
        if cause is not None:
            raise cause from None
        raise


def _cause_of_type(err: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` along the cause chain (omegaconf wraps a resolver's error)."""
    while err is not None and not isinstance(err, kind):
        err = err.__cause__ or err.__context__
    return err


def _unknown_key(err: BaseException) -> str | None:
    """The full key of an override that names no existing key, found along the cause chain."""
    while err is not None:
        full_key = getattr(err, "full_key", None)
        if full_key and "not in struct" in str(err):
            return str(full_key)
        err = err.__cause__ or err.__context__
    return None


def resolved_container(config: DictConfig) -> dict:
    """The resolved config as plain containers, without Hydra's own node."""
    container = OmegaConf.to_container(config, resolve=True)
    container.pop("hydra", None)
    return container


def to_yaml(config: DictConfig) -> str:
    """The resolved config as YAML, without Hydra's own node."""
    return OmegaConf.to_yaml(resolved_container(config))
