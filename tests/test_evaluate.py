"""The evaluate stage on the tiny demo run: the table, the figures, and its refusals."""

import csv
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from proto_lightning.data.generate import make_dataset
from proto_lightning.errors import IncompatibleWeightsError, MissingArtifactError
from proto_lightning.evaluation.table import METRICS
from proto_lightning.models import BlackBoxClassifier
from proto_lightning.stages.evaluate import run_evaluate
from tests.helpers import TINY_DEMO

SMALL = [o for o in TINY_DEMO if o.startswith("evaluation.")]


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_demo_table_has_every_method_and_metric(tiny_demo, stage_config):
    run = tiny_demo.run_dir
    rows = read_rows(run / "evaluate" / "results.csv")
    assert list(rows) == ["black box", "Post-hoc PPN", "ProtoPNet", "Grad-CAM", "LIME"]
    assert set(METRICS) <= set(rows["LIME"])
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
    assert (
        int(float(posthoc["prototypes"])) == 4 * 3
        and int(float(rows["ProtoPNet"]["prototypes"])) == 4 * 2
    )
    for method in ("Post-hoc PPN", "ProtoPNet"):
        for key in ("consistency", "stability", "deletion_auc", "insertion_auc"):
            value, low, high = (float(rows[method][key + s]) for s in ("", "_low", "_high"))
            assert 0.0 <= low <= high <= 1.0 and 0.0 <= value <= 1.0
    assert rows["Grad-CAM"]["consistency"] == "" and rows["black box"]["deletion_auc"] == ""
    assert float(rows["LIME"]["seconds_per_image"]) > float(rows["Grad-CAM"]["seconds_per_image"])
    figures = run / "evaluate" / "figures"
    names = {p.name for p in figures.glob("*.png")}
    assert {"deletion_insertion.png", "posthoc_prototypes.png", "protopnet_prototypes.png"} <= names
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
