"""Reading the files models come from (checkpoints, artifacts, weight files) with errors that say what to do.

Every file a user names is data, never code: it is read with `torch.load(weights_only=True)`, which
unpickles tensors, containers and plain values only and refuses any other Python object (a pickle
can name any callable, e.g. `os.system`, and unpickling calls it). `trust_file=True` is the
explicit, documented opt-in to a full unpickle, for an old file the user made themselves.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from proto_lightning.errors import IncompatibleWeightsError, UntrustedFileError

log = logging.getLogger(__name__)

# torch's weights-only unpickler prefixes every refusal of a Python object with this sentence
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


def read_torch_file(
    path: str | Path,
    what: str,
    made_by: str | None = None,
    error: type[Exception] = IncompatibleWeightsError,
    map_location: str | torch.device = "cpu",
    trust_file: bool = False,
) -> Any:
    """`torch.load` a file as data: missing names what makes it; code in it raises `UntrustedFileError`;
    a truncated or foreign one raises `error`. `trust_file` unpickles any object (runs code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {path} does not exist" + (f"; {made_by}" if made_by else "")
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_file)
    except pickle.UnpicklingError as err:
        refused = _refused_object(str(err))
        if refused is not None:
            raise UntrustedFileError(
                f"refused to read {what} {path}: it holds Python objects other than tensors and plain "
                f"values (it names {refused}), and unpickling those can run code. Files this "
                "project writes hold none. If you made this file yourself (e.g. a posthoc.pt of "
                "artifact format 1, which kept numpy arrays), pass trust_file=true to read it anyway."
            ) from err
        raise error(f"cannot read {what} {path} (truncated or not a torch file): {err}") from err
    except Exception as err:
        raise error(f"cannot read {what} {path} (truncated or not a torch file): {err}") from err


def _refused_object(message: str) -> str | None:
    """The Python object torch's weights-only unpickler refused (e.g. `posix.system` from its
    "GLOBAL posix.system"), or None when it refused something else (a truncated or foreign pickle)."""
    if not message.startswith(_WEIGHTS_ONLY_REFUSAL):
        return None
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else None


def plain_data(value: Any) -> Any:
    """`value` as what `torch.load(weights_only=True)` reads: tensors (from numpy arrays too), numbers,
    strings, None, and dicts, lists and tuples of them; anything else is a `TypeError`."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(plain_data(item) for item in value)
    if isinstance(value, Sequence):
        return [plain_data(item) for item in value]
    raise TypeError(f"{type(value).__name__} is not plain data (tensor, number, string, container)")


# the kinds of model file this project reads, as a user would name them, and what makes each
KINDS = {
    "black-box checkpoint": "proto-lightning blackbox",
    "ProtoPNet checkpoint": "proto-lightning protopnet",
    "post-hoc artifact (posthoc.pt)": "proto-lightning decompose",
}


def file_kind(content: Any) -> str:
    """Which kind of model file `content` (a loaded file) is, by what it holds."""
    if not isinstance(content, dict):
        return f"{type(content).__name__} (not a model file of this project)"
    if str(content.get("format", "")).startswith("proto-lightning/posthoc-ppn"):
        return "post-hoc artifact (posthoc.pt)"
    params = content.get("hyper_parameters")
    if isinstance(params, dict) and {"prototypes_per_class", "prototype_dim"} <= params.keys():
        return "ProtoPNet checkpoint"
    if isinstance(params, dict) and {"backbone", "num_classes", "optimizer"} <= params.keys():
        return "black-box checkpoint"
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return "plain state dict (weights without the model's description)"
    return "file of unknown content (keys: " + ", ".join(sorted(map(str, content))[:8]) + ")"


def require_kind(
    content: Any, expected: str, path: str | Path, error: type[Exception] = IncompatibleWeightsError
) -> None:
    """Refuse a model file of another of this project's kinds (KINDS) than `expected`, naming both;
    other content is left to the loader's own checks."""
    found = file_kind(content)
    if found != expected and found in KINDS:
        raise error(
            f"{path} is a {found}; a {expected} is needed here (made by `{KINDS[expected]}`)"
        )


def checkpoint_hyperparameters(
    checkpoint: Any, required: Iterable[str], path: str | Path, kind: str
) -> dict[str, Any]:
    """The Lightning checkpoint's hyper-parameters to rebuild its model, refusing a checkpoint of another kind.

    The backbone's pretrained weights are dropped (`weights: None`): the checkpoint holds the weights.
    """
    params = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not {"backbone", *required} <= params.keys():
        raise IncompatibleWeightsError(
            f"{path} is not a {kind} checkpoint (hyper-parameters: {sorted(params)})"
        )
    return {**params, "backbone": {**params["backbone"], "weights": None}}


def require_class_count(
    what: str,
    path: str | Path,
    found: int,
    expected: int,
    stage: str,
    class_names: Sequence[str] | None = None,
) -> None:
    """Refuse a model file that predicts another number of classes than the data has (naming the
    data's classes, e.g. a stray folder that became one)."""
    if found != expected:
        names = list(class_names or [])
        listed = f" ({', '.join(names[:12])}{' ...' if len(names) > 12 else ''})" if names else ""
        raise IncompatibleWeightsError(
            f"{what} {path} predicts {found} classes but the data has {expected}{listed}: it was "
            f"made on another dataset; {stage} it on the data it was trained on"
        )


# where training loops keep the model's weights in a checkpoint dict (PyTorch's tutorial, Lightning)
STATE_DICT_ENTRIES = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: Path, trust_file: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a `torch.save` file (read as data) or a .safetensors file.

    A training loop's checkpoint dict is unwrapped (its `state_dict`, `model_state_dict` or `model`
    entry) and DDP's `module.` prefix dropped. A black-box checkpoint of this project is refused
    with the key that takes it; a whole pickled model with how to save its state dict.
    """
    if Path(path).suffix == ".safetensors":
        if not Path(path).is_file():
            raise FileNotFoundError(f"weight file {path} does not exist")
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:
            raise IncompatibleWeightsError(f"cannot read weight file {path}: {err}") from err
    else:
        state = read_torch_file(path, "weight file", trust_file=trust_file)
    if isinstance(state, nn.Module):
        raise IncompatibleWeightsError(
            f"{path} holds a whole pickled {type(state).__name__}, not its weights: save them with "
            "torch.save(model.state_dict(), path) and name that file"
        )
    if file_kind(state) == "black-box checkpoint":
        raise IncompatibleWeightsError(
            f"{path} is a black-box checkpoint of `proto-lightning blackbox`: give it as "
            "blackbox_ckpt=<file> (without blackbox= and blackbox_weights=)"
        )
    if isinstance(state, dict):
        entry = next((k for k in STATE_DICT_ENTRIES if isinstance(state.get(k), dict)), None)
        state = state[entry] if entry is not None else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise IncompatibleWeightsError(
            f"{path} is not a state dict (names -> tensors); it holds {found}. Save the model's "
            "weights with torch.save(model.state_dict(), path), or keep them under one of "
            f"{list(STATE_DICT_ENTRIES)}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_state_dict_file(
    module: nn.Module, path: Path, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load a state dict saved with `torch.save` into `module`, or explain what does not fit."""
    load_state_dict_checked(module, read_state_dict(path), path, ignore_prefixes)


def load_state_dict_checked(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    ignore_prefixes: tuple[str, ...] = (),
    settings: str = "model/backbone",
) -> None:
    """Load `state` (from file `path`) into `module`, refusing, with the keys and shapes named, what
    does not fit; `settings` names where the user picks the architecture on this path."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong_shape = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        shapes = [
            f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in wrong_shape
        ]
        hint = (
            f"The model was saved at another image size: set img_size in {settings} to the size "
            "it was trained at (and data.image_size to match)."
            if any("pos_embed" in k for k in wrong_shape)
            else f"Is it a checkpoint of another architecture? Pick the matching {settings}."
        )
        raise IncompatibleWeightsError(
            f"weights in {path} do not fit {type(module).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(wrong_shape)} of another shape "
            f"({'; '.join(shapes[:3]) or 'none'}). {hint}"
        )
    module.load_state_dict(state, strict=False)
    log.info("loaded %d tensors from %s", len(state), path)
