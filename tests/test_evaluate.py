"""The evaluate stage on the tiny demo run: the table, the figures, and its refusals."""

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from scipy.spatial.distance import cdist

from proto_lightning.data.generate import make_dataset
from proto_lightning.errors import ConfigValueError, IncompatibleWeightsError, MissingArtifactError
from proto_lightning.evaluation.drawing import HIGH_COLOUR, RF_COLOUR, draw_prototype_grid
from proto_lightning.evaluation.table import METRICS, ResultRow
from proto_lightning.metrics.bootstrap import Estimate
from proto_lightning.models import BlackBoxClassifier
from proto_lightning.stages.evaluate import claim_note, metric_names, run_evaluate
from tests.helpers import TINY_DEMO

SMALL = [o for o in TINY_DEMO if o.startswith("evaluation.")]


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_demo_table_has_every_method_and_metric(tiny_demo, stage_config):
    run = tiny_demo.run_dir
    rows = read_rows(run / "evaluate" / "results.csv")
    # the demo's evaluation runs LIME's named quick variant, and its row says so
    assert list(rows) == [
        "black box",
        "Post-hoc PPN",
        "ProtoPNet",
        "KMEx",
        "Grad-CAM",
        "LIME (quick)",
    ]
    assert set(METRICS) <= set(rows["LIME (quick)"])
    # black-box accuracy, recomputed here by a plain loop over the test split
    cfg = stage_config("evaluate")
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    net = BlackBoxClassifier.load_checkpoint(
        next((run / "blackbox" / "checkpoints").glob("best-*.ckpt"))
    ).net.eval()
    with torch.no_grad():
        correct = [int(net(s["image"][None]).argmax()) == s["label"] for s in datamodule.test_set]
    assert float(rows["black box"]["accuracy"]) == pytest.approx(sum(correct) / len(correct))
    posthoc = rows["Post-hoc PPN"]
    assert (
        posthoc["accuracy"] == rows["black box"]["accuracy"] and float(posthoc["agreement"]) == 1.0
    )
    assert float(posthoc["head_error"]) < 1e-5
    # KMEx: the nearest k-means centre's class, recomputed with scipy's distances on the embeddings
    kmex = torch.load(run / "decompose" / "kmex.pt", weights_only=True)
    centres = kmex["prototypes"].reshape(-1, kmex["prototypes"].shape[-1]).numpy()  # (C k, D)
    with torch.no_grad():
        z = torch.cat([net.features(s["image"][None]).mean((2, 3)) for s in datamodule.test_set])
    nearest = cdist(z.numpy(), centres).argmin(1) // kmex["prototypes"].shape[1]
    labels = np.array([s["label"] for s in datamodule.test_set])
    assert float(rows["KMEx"]["accuracy"]) == pytest.approx(float((nearest == labels).mean()))
    bb_pred = np.array([int(net(s["image"][None]).argmax()) for s in datamodule.test_set])
    assert float(rows["KMEx"]["agreement"]) == pytest.approx(float((nearest == bb_pred).mean()))
    assert rows["KMEx"]["head_error"] == "" and int(float(rows["KMEx"]["prototypes"])) == 4 * 3
    # each KMEx prototype is shown as its class's push image of nearest embedding (brute force)
    push = datamodule.push_set
    with torch.no_grad():
        pz = torch.cat(
            [net.features(push[i]["image"][None]).mean((2, 3)) for i in range(len(push))]
        )
    push_rows, push_labels = np.asarray(push.rows), np.asarray(push.labels)
    distances = cdist(centres, pz.numpy())  # (C k, push images)
    own = push_labels[None, :] == (np.arange(len(centres)) // kmex["prototypes"].shape[1])[:, None]
    expected_rows = push_rows[np.where(own, distances, np.inf).argmin(1)]
    assert kmex["projection"]["rows"].tolist() == expected_rows.tolist()
    assert (
        int(float(posthoc["prototypes"])) == 4 * 3
        and int(float(rows["ProtoPNet"]["prototypes"])) == 4 * 2
    )
    for method in ("Post-hoc PPN", "ProtoPNet", "KMEx"):  # consistency: a share of the prototypes
        consistent = float(rows[method]["consistency"]) * float(rows[method]["prototypes"])
        assert consistent == pytest.approx(round(consistent), abs=1e-6)
    assert rows["Grad-CAM"]["consistency"] == "" and rows["black box"]["deletion_auc"] == ""
    # true-part localisation: shares of (image, prototype) pairs and of (class, defining part) pairs
    n_test = len(datamodule.test_set)
    for method, k in (("Post-hoc PPN", 3), ("ProtoPNet", 2)):
        on_part = float(rows[method]["part_localisation"]) * n_test * k
        assert on_part == pytest.approx(round(on_part), abs=1e-6)
        found = float(rows[method]["defining_parts"]) * 4 * 3  # 4 classes x head, wing, tail
        assert found == pytest.approx(round(found), abs=1e-6)
    assert rows["Grad-CAM"]["part_localisation"] == ""
    assert float(rows["LIME (quick)"]["seconds_per_image"]) > float(
        rows["Grad-CAM"]["seconds_per_image"]
    )
    figures = run / "evaluate" / "figures"
    names = {p.name for p in figures.glob("*.png")}
    assert {
        "deletion_insertion.png",
        "posthoc_prototypes.png",
        "protopnet_prototypes.png",
        "kmex_prototypes.png",
    } <= names
    assert len([n for n in names if n.startswith("image_")]) == 2
    assert "| Post-hoc PPN |" in (run / "evaluate" / "results.md").read_text()


def test_missing_artifact_names_the_stage_to_run(tiny_demo, stage_config, tmp_path: Path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_demo.run_dir / "blackbox", partial / "blackbox")
    shutil.copytree(tiny_demo.run_dir / "protopnet", partial / "protopnet")
    with pytest.raises(MissingArtifactError, match="proto-lightning decompose"):
        run_evaluate(stage_config("evaluate", f"from_run={partial}", *SMALL))
    with pytest.raises(MissingArtifactError, match="blackbox_ckpt"):
        run_evaluate(stage_config("evaluate", *SMALL))


def test_models_of_another_dataset_are_refused(tiny_demo, stage_config, tmp_path: Path):
    other = make_dataset(tmp_path / "three", classes=3, per_class=6, size=48, seed=1)
    cfg = stage_config("evaluate", f"from_run={tiny_demo.run_dir}", f"data.root={other}", *SMALL)
    with pytest.raises(IncompatibleWeightsError, match="predicts 4 classes but the data has 3"):
        run_evaluate(cfg)


def test_black_box_alone_gives_the_black_box_rows_in_a_wandb_table(
    tiny_demo, stage_config, tmp_path
):
    ckpt = next((tiny_demo.run_dir / "blackbox" / "checkpoints").glob("best-*.ckpt"))
    cfg = stage_config(
        "evaluate", f"blackbox_ckpt={ckpt}", "logger=wandb", "evaluation.methods=[gradcam]", *SMALL
    )
    result = run_evaluate(cfg)
    assert list(read_rows(result.artifacts["results.csv"])) == ["black box", "Grad-CAM"]
    (run_file,) = (result.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"evaluation/results" in run_file.read_bytes()


def test_results_md_names_paths_relative_to_its_run_folder(tiny_demo):
    """The table travels (attached to a message, opened after a cluster run): no machine's paths."""
    text = (tiny_demo.run_dir / "evaluate" / "results.md").read_text()
    best = tiny_demo.artifacts["blackbox best checkpoint"].name
    assert f"blackbox_ckpt=../blackbox/checkpoints/{best}" in text
    assert str(tiny_demo.run_dir.parent) not in text


class OnePrototype:
    """A network of one class with one prototype, projected onto push row 0 with known boxes."""

    num_classes, prototypes_per_class = 1, 1

    def nearest_patch(self, label: int, i: int) -> dict:
        return {"row": 0, "rf_box": (0, 32, 0, 32), "high_activation_box": (8, 16, 8, 20)}


def test_prototype_grid_frames_the_receptive_field_and_the_high_activation_box(tmp_path):
    push_set = SimpleNamespace(by_row=lambda row: {"image": torch.zeros(3, 32, 32)})
    datamodule = SimpleNamespace(
        push_set=push_set,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        records=SimpleNamespace(class_names=["only"]),
    )
    path = draw_prototype_grid(OnePrototype(), datamodule, tmp_path / "grid.png", tile=32)
    grid = np.asarray(Image.open(path))
    top = 14 + 14  # the legend line, then the class's name line
    assert tuple(grid[top + 24, 0]) == RF_COLOUR  # left edge of the whole-image receptive field
    assert tuple(grid[top + 12, 8]) == HIGH_COLOUR  # left edge of the high-activation box
    assert tuple(grid[top + 12, 19]) == HIGH_COLOUR  # right edge (x1 = 20, end-exclusive)
    assert tuple(grid[top + 12, 14]) == (0, 0, 0)  # inside: the image itself


def test_the_declared_metric_names_cover_what_evaluate_reports(tiny_demo):
    reported = {k.removeprefix("evaluate ") for k in tiny_demo.metrics if k.startswith("evaluate ")}
    assert reported and reported <= metric_names(
        ["posthoc", "protopnet", "kmex", "gradcam", "lime"]
    )


def test_an_unknown_part_protocol_is_refused_before_any_work(stage_config, tmp_path: Path):
    cfg = stage_config("evaluate", "evaluation.parts.protocol=huang")
    with pytest.raises(ConfigValueError, match="reference, scaled"):
        run_evaluate(cfg)
    assert not Path(cfg.run_dir).exists()


def test_an_unknown_defining_part_is_refused_naming_the_parts(stage_config):
    cfg = stage_config("evaluate", "evaluation.parts.defining_parts=[head,crest]")
    with pytest.raises(ConfigValueError, match=r"\['crest'\].*'beak', 'head'"):
        run_evaluate(cfg)


def test_results_md_names_the_part_protocol(tiny_demo):
    text = (tiny_demo.run_dir / "evaluate" / "results.md").read_text()
    assert "protocol `scaled`" in text  # the demo's; evaluate's default is `reference`


def test_claim_line_sets_the_papers_lead_beside_the_measured_difference():
    est = lambda v: Estimate(v, v, v)  # noqa: E731
    rows = [
        ResultRow("Post-hoc PPN", {"consistency": est(0.55), "stability": est(0.9)}),
        ResultRow("ProtoPNet", {"consistency": est(0.30), "stability": est(0.95)}),
    ]
    line = claim_note({"consistency": 9.4, "stability": 12.0}, rows, "reference")
    assert "consistency +9.4 points claimed, measured here over ProtoPNet +25.0" in line
    assert "stability +12.0 points claimed, measured here over ProtoPNet -5.0" in line
    only = claim_note({"consistency": None, "stability": 19.2}, rows[:1], "reference")
    assert "consistency" not in only and "stability +19.2 points claimed, not measured" in only
    assert claim_note(None, rows, "reference") is None


def test_a_cub_experiments_claim_is_written_under_the_table(tiny_demo, stage_config):
    cfg = stage_config(
        "evaluate",
        f"from_run={tiny_demo.run_dir}",
        "paper_claims={consistency: 9.4, stability: 12.0}",
        *SMALL,
    )
    result = run_evaluate(cfg)
    text = result.artifacts["results.md"].read_text()
    assert "consistency +9.4 points claimed, measured here over ProtoPNet" in text


def test_artifacts_of_another_data_split_are_refused_in_one_line(tiny_demo, parts_root, tmp_path):
    """The demo's networks were projected onto seed 0's training split; `seed=1` carves another
    validation split, so some pushed images are not training images there: one line, as a user sees
    it, instead of a KeyError while drawing."""
    import subprocess
    import sys

    from tests.helpers import fast_overrides

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "proto_lightning",
            "evaluate",
            f"from_run={tiny_demo.run_dir}",
            "seed=1",
            *fast_overrides(parts_root, tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not in this run's training split" in lines[0], lines
