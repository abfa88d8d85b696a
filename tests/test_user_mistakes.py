"""Mistakes a user makes, run through the console script as a user runs it: one line, early, nothing
left that looks like a result; with HYDRA_FULL_ERROR=1 the traceback is still there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from proto_lightning.cli import main
from proto_lightning.errors import ConfigKeyError, ConfigValueError
from proto_lightning.models.blackbox import OPTIMIZER_DEFAULTS, BlackBoxClassifier
from proto_lightning.models.imported import save_as_checkpoint
from tests.helpers import VENV_BIN, fast_overrides

C = 4  # the tiny dataset's classes
LARGE = 1 << 20


@pytest.fixture(scope="module")
def files(parts_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files users name by mistake, and a copy of the data with one corrupt image."""
    root = tmp_path_factory.mktemp("mistakes")
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(num_classes=C)
    made = {
        "r18": r18.state_dict(),
        "r18_5": torchvision.models.resnet18(num_classes=5).state_dict(),
        "loop": {"epoch": 3, "net": r18.state_dict(), "optimizer": {}},
        "own_ckpt": {
            "hyper_parameters": {
                "backbone": {"name": "resnet18"},
                "num_classes": C,
                "optimizer": {},
            },
            "state_dict": {},
        },
        "artifact": {"format": "proto-lightning/posthoc-ppn/2"},
        "vit32": timm.create_model(
            "vit_tiny_patch16_224", num_classes=C, global_pool="avg", img_size=32, depth=1
        ).state_dict(),
    }
    paths = {name: root / f"{name}.pt" for name in made}
    for name, content in made.items():
        torch.save(content, paths[name])
    r18_blackbox = BlackBoxClassifier({"name": "resnet18"}, C, OPTIMIZER_DEFAULTS)
    paths["r18_ckpt"] = save_as_checkpoint(r18_blackbox, root / "r18.ckpt", root / "r18.pt")
    torch.save(r18, root / "whole.pt")  # a whole pickled model
    paths["whole"] = root / "whole.pt"
    corrupt = root / "corrupt"
    shutil.copytree(parts_root, corrupt)
    # a test image: decompose reads it last, after its large files exist (all must go)
    split = dict(
        line.split() for line in (corrupt / "train_test_split.txt").read_text().splitlines()
    )
    names = dict(line.split() for line in (corrupt / "images.txt").read_text().splitlines())
    first_test = next(i for i, is_train in split.items() if is_train == "0")
    (corrupt / "images" / names[first_test]).write_bytes(b"not an image")
    paths["corrupt"] = corrupt
    paths["data"] = parts_root
    return paths


def case_arguments(files: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """name -> (stage and overrides, the phrase the one line must hold)."""
    vit = "blackbox=vit_tiny_patch16_224"
    return {
        "missing weights": (
            ["decompose", "blackbox=resnet18", "blackbox_weights=nope.pt"],
            "no such file",
        ),
        "missing data folder": (
            [
                "decompose",
                "blackbox=resnet18",
                f"blackbox_weights={files['r18']}",
                "data.root=nodata",
            ],
            "nodata",
        ),
        "corrupt image": (
            [
                "decompose",
                "blackbox=resnet18",
                f"blackbox_weights={files['r18']}",
                f"data.root={files['corrupt']}",
            ],
            "cannot",
        ),
        "another architecture": (
            ["decompose", "blackbox=resnet34", f"blackbox_weights={files['r18']}"],
            "do not fit",
        ),
        "5-class head on 4-class data": (
            ["decompose", "blackbox=resnet18", f"blackbox_weights={files['r18_5']}"],
            "predicts 5 classes but the data has 4 (",
        ),
        "artifact as black box": (
            ["decompose", f"blackbox_ckpt={files['artifact']}"],
            "is a post-hoc artifact",
        ),
        "unknown experiment": (
            ["decompose", "experiment=cub_resnet3"],
            "Did you mean: cub_resnet34",
        ),
        "missing experiment": (["evaluate", "experiment=imagenet_resnet101"], "unknown experiment"),
        "model name typo": (
            ["decompose", "blackbox=resnet81", f"blackbox_weights={files['r18']}"],
            "Did you mean resnet18",
        ),
        "pickled model": (
            [
                "decompose",
                "blackbox=resnet18",
                f"blackbox_weights={files['whole']}",
                "trust_file=true",
            ],
            "torch.save(model.state_dict()",
        ),
        "training-loop dict": (
            ["decompose", "blackbox=resnet18", f"blackbox_weights={files['loop']}"],
            "['epoch', 'net', 'optimizer']",
        ),
        "own checkpoint as weights": (
            ["decompose", "blackbox=resnet18", f"blackbox_weights={files['own_ckpt']}"],
            "blackbox_ckpt=",
        ),
        "vit of another size": (
            [
                "decompose",
                vit,
                f"blackbox_weights={files['vit32']}",
                "blackbox_kwargs={global_pool: avg, depth: 1}",
            ],
            "img_size in blackbox=",
        ),
        "ProtoPNet from another backbone": (
            ["protopnet", f"model.init_from_blackbox={files['r18_ckpt']}"],
            "choose the same model/backbone",
        ),
        "objective typo": (
            [
                "decompose",
                "blackbox=resnet18",
                f"blackbox_weights={files['r18']}",
                "model.refinement.objective=papr",
            ],
            "Did you mean: paper",
        ),
    }


def run_console(arguments: list[str], data: Path, work: Path, full_error: bool):
    """The console script in `work`, on the tiny data unless the case names its own."""
    own_root = any(a.startswith("data.root=") for a in arguments)
    overrides = [o for o in fast_overrides(data, work / "run") if not o.startswith("hydra.run")]
    overrides = [o for o in overrides if not (own_root and o.startswith("data.root="))]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1" if full_error else "0"}
    command = [
        str(VENV_BIN / "proto-lightning"),
        *arguments,
        *overrides,
        f"paths.runs={work / 'runs'}",
    ]
    return subprocess.run(command, cwd=work, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_each_mistake_is_one_line_early_and_leaves_nothing_that_looks_like_a_result(
    files, tmp_path
):
    cases = case_arguments(files)
    jobs = {
        (name, full): (arguments, tmp_path / f"{abs(hash(name))}-{full}")
        for name, (arguments, _) in cases.items()
        for full in (False, True)
    }
    for _, work in jobs.values():
        work.mkdir()
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = {
            key: pool.submit(run_console, arguments, files["data"], work, key[1])
            for key, (arguments, work) in jobs.items()
        }
    for (name, full), future in done.items():
        result, work = future.result(), jobs[name, full][1]
        phrase = cases[name][1]
        assert result.returncode != 0, (name, result.stdout[-2000:])
        assert phrase in result.stderr, (name, full, result.stderr[-3000:])
        if full:
            assert "Traceback" in result.stderr, (name, result.stderr[-2000:])
            continue
        lines = result.stderr.strip().splitlines()
        assert len(lines) <= 3 and "Traceback" not in result.stderr, (name, result.stderr[-3000:])
        runs = work / "runs"
        large = [p for p in runs.rglob("*") if p.is_file() and p.stat().st_size > LARGE]
        assert large == [], (name, large)
        for folder in (p.parent for p in runs.rglob(".hydra")):
            assert (folder / "FAILED").read_text().strip() in " ".join(result.stderr.split()), name
            assert "run failed" in next(folder.glob("*.log")).read_text().splitlines()[-1], name


def decompose_r18(files: dict[str, Path], *overrides: str) -> list[str]:
    """`decompose` of the 4-class ResNet-18 state dict, with `overrides`."""
    return ["decompose", "blackbox=resnet18", f"blackbox_weights={files['r18']}", *overrides]


def test_main_from_python_returns_the_result_and_raises_the_typed_error(
    files, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = ["python", "untouched"]
    monkeypatch.setattr("sys.argv", argv)
    overrides = [*fast_overrides(files["data"], tmp_path / "run"), "callbacks.faithfulness=null"]
    result = main(
        decompose_r18(files, "model.prototypes_per_class=1", "callbacks.gallery=null", *overrides)
    )
    assert sys.argv is argv and sys.argv == ["python", "untouched"]
    assert result.artifacts["artifact"].is_file()
    assert result.metrics["test/agreement"] == 1.0
    assert (result.run_dir / "FINISHED").is_file()
    with pytest.raises(ConfigValueError, match="Did you mean: paper"):
        main(decompose_r18(files, "model.refinement.objective=papr", *overrides))
    with pytest.raises(ConfigKeyError, match="unknown experiment"):
        main(["blackbox", "experiment=nope", *overrides])
    assert sys.argv is argv


def test_a_refinement_objective_typo_is_refused_before_any_image_is_read(
    files, tmp_path, monkeypatch
):
    """A spy on the feature pass (and on image decoding): neither runs before the refusal."""

    def spy(*args, **kwargs):
        raise AssertionError("an image was read before the check")

    monkeypatch.setattr("proto_lightning.stages.decompose.feature_elements", spy)
    monkeypatch.setattr("proto_lightning.data.dataset.decode_image", spy)
    monkeypatch.chdir(tmp_path)
    typo = "model.refinement.objective=heatmap_cos"
    with pytest.raises(ConfigValueError, match="model.refinement.objective='heatmap_cos'"):
        main(decompose_r18(files, typo, *fast_overrides(files["data"], tmp_path / "run")))
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run folder


def test_the_runs_tool_tells_finished_failed_and_unfinished_runs(tmp_path, capsys):
    for name, marker in (("a", "FINISHED"), ("b", "FAILED"), ("c", None)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        if marker:
            (tmp_path / name / marker).write_text("weights in x.pt do not fit\n")
    statuses = main(["runs", str(tmp_path)])
    assert [(s.folder.name, s.status) for s in statuses] == [
        ("a", "finished"),
        ("b", "failed"),
        ("c", "unfinished"),
    ]
    assert (
        "failed     " + str(tmp_path / "b") + "  weights in x.pt do not fit"
        in capsys.readouterr().out
    )


def test_hidden_folders_are_never_classes(tmp_path):
    from PIL import Image

    from proto_lightning.data.records import read_image_folders

    for split in ("train", "test"):
        for name in ("cat", "dog", ".ipynb_checkpoints"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "a.png")
    assert read_image_folders(tmp_path).class_names == ["cat", "dog"]
