"""Files a user names are data, never code: a pickle that would run a command is refused unread at
every entry point, and the refusal says why and how to opt in (`trust_file=true`); a model file of
another kind is named as such."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from proto_lightning.errors import IncompatibleWeightsError, UntrustedFileError
from proto_lightning.models import BlackBoxClassifier, BlackBoxNet, ProtoPNet
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.stages.blackbox import run_blackbox, run_test
from proto_lightning.stages.decompose import run_decompose
from proto_lightning.stages.evaluate import run_evaluate
from proto_lightning.stages.protopnet import run_protopnet

REPO = Path(__file__).resolve().parents[1]


class RunsCommand:
    """Unpickling this calls `os.system(command)`: what a crafted checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped file whose unpickling would create `marker`; (file, marker)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.ckpt"
    torch.save(
        {
            "state_dict": {},
            "hyper_parameters": {"backbone": {"name": "small_cnn"}, "num_classes": 4},
            "payload": RunsCommand(f"touch {marker}"),
        },
        path,
    )
    return path, marker


def assert_refused(excinfo: pytest.ExceptionInfo, path: Path, marker: Path) -> None:
    message = str(excinfo.value)
    assert not marker.exists(), "the crafted file's command ran"
    assert str(path) in message and "posix.system" in message and "trust_file=true" in message


def test_the_crafted_file_really_runs_code_when_unpickled(crafted):
    """The fixture is a real attack: a plain `torch.load(weights_only=False)` runs its command."""
    path, marker = crafted
    torch.load(path, weights_only=False)
    assert marker.exists()


def best_checkpoint(tiny_demo) -> str:
    return str(tiny_demo.artifacts["blackbox best checkpoint"])


@pytest.mark.parametrize(
    ("stage", "run", "key"),
    [
        ("decompose", run_decompose, "blackbox_ckpt"),
        ("evaluate", run_evaluate, "blackbox_ckpt"),
        ("test", run_test, "ckpt_path"),
        ("blackbox", run_blackbox, "ckpt_path"),  # resume
        ("protopnet", run_protopnet, "ckpt_path"),  # resume
        ("protopnet", run_protopnet, "model.init_from_blackbox"),
    ],
)
def test_every_stage_refuses_a_file_that_holds_code(stage, run, key, crafted, stage_config):
    path, marker = crafted
    with pytest.raises(UntrustedFileError) as excinfo:
        run(stage_config(stage, f"{key}={path}"))
    assert_refused(excinfo, path, marker)


@pytest.mark.parametrize("key", ["posthoc", "protopnet_ckpt", "kmex_artifact"])
def test_evaluate_refuses_a_crafted_network_beside_a_good_black_box(
    key, crafted, stage_config, tiny_demo
):
    path, marker = crafted
    cfg = stage_config("evaluate", f"blackbox_ckpt={best_checkpoint(tiny_demo)}", f"{key}={path}")
    with pytest.raises(UntrustedFileError) as excinfo:
        run_evaluate(cfg)
    assert_refused(excinfo, path, marker)


def test_a_users_classifier_file_that_holds_code_is_refused(crafted, stage_config):
    path, marker = crafted
    cfg = stage_config("decompose", "blackbox=resnet18", f"blackbox_weights={path}")
    with pytest.raises(UntrustedFileError) as excinfo:
        run_decompose(cfg)
    assert_refused(excinfo, path, marker)


def test_a_backbone_weight_file_that_holds_code_is_refused(crafted):
    path, marker = crafted
    with pytest.raises(UntrustedFileError) as excinfo:
        BlackBoxNet("small_cnn", 4, weights=str(path))
    assert_refused(excinfo, path, marker)


def test_part_peaks_script_refuses_it(crafted, parts_root):
    path, marker = crafted
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "part_peaks.py"), str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode != 0 and "UntrustedFileError" in done.stderr
    assert "trust_file" in done.stderr and not marker.exists()


def test_the_artifact_decompose_writes_is_plain_data(tiny_demo):
    """posthoc.pt reads with torch's own weights-only unpickler, independently of our loader."""
    state = torch.load(tiny_demo.artifacts["decompose artifact"], weights_only=True)
    assert state["format"] == "proto-lightning/posthoc-ppn/2"
    assert isinstance(state["extras"]["rf_boxes"], torch.Tensor)


def test_an_old_artifact_loads_only_behind_trust_file(tiny_demo, tmp_path):
    """Format 1 kept numpy arrays: refused by default, read with trust_file=True, same prototypes."""
    new = tiny_demo.artifacts["decompose artifact"]
    state = torch.load(new, weights_only=True)
    state["format"] = "proto-lightning/posthoc-ppn/1"
    state["extras"] = {
        k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state["extras"].items()
    }
    old = tmp_path / "old-posthoc.pt"
    torch.save(state, old)
    with pytest.raises(UntrustedFileError, match="numpy"):
        PostHocPrototypeNetwork.load(old)
    model = PostHocPrototypeNetwork.load(old, trust_file=True)
    assert torch.equal(model.prototypes, state["prototypes"])
    assert model.nearest_patch(0, 0) == PostHocPrototypeNetwork.load(new).nearest_patch(0, 0)


def test_a_model_file_of_another_kind_is_named_as_such(tiny_demo):
    """Every pair of this project's model files: the refusal names what the file is and what is needed."""
    files = {
        "black-box checkpoint": tiny_demo.artifacts["blackbox best checkpoint"],
        "ProtoPNet checkpoint": tiny_demo.artifacts["protopnet last checkpoint"],
        "post-hoc artifact (posthoc.pt)": tiny_demo.artifacts["decompose artifact"],
    }
    loaders = {
        "black-box checkpoint": BlackBoxClassifier.load_checkpoint,
        "ProtoPNet checkpoint": ProtoPNet.load_checkpoint,
        "post-hoc artifact (posthoc.pt)": PostHocPrototypeNetwork.load,
    }
    for needed, load in loaders.items():
        for kind, path in files.items():
            if kind == needed:
                load(path)  # the right kind loads
                continue
            with pytest.raises(IncompatibleWeightsError) as excinfo:
                load(path)
            assert f"is a {kind}; a {needed} is needed" in str(excinfo.value)
