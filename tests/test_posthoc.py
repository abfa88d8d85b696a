"""The post-hoc network on the generated data: exact logits, a self-contained artifact, explanations."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from proto_lightning.data import CUB200DataModule
from proto_lightning.models import BlackBoxClassifier
from proto_lightning.models.posthoc import IncompatibleArtifactError, PostHocPrototypeNetwork
from proto_lightning.stages.blackbox import run_blackbox
from proto_lightning.stages.decompose import reported_metrics, run_decompose
from tests.helpers import assert_drawn, stage_cfg


@pytest.fixture(scope="module")
def decomposed(parts_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A black box trained 3 epochs on the tiny data, and its decomposition (k = 3)."""
    root = tmp_path_factory.mktemp("posthoc")
    blackbox = run_blackbox(
        stage_cfg("blackbox", parts_root, root / "bb", "trainer.max_epochs=3", "run_test=false")
    )
    ckpt = blackbox.artifacts["best checkpoint"]
    result = run_decompose(
        stage_cfg("decompose", parts_root, root / "dec", f"blackbox_ckpt={ckpt}")
    )
    return ckpt, result


def test_exact_on_every_test_image(decomposed, parts_root: Path):
    ckpt, result = decomposed
    model = PostHocPrototypeNetwork.load(result.artifacts["artifact"])
    blackbox = BlackBoxClassifier.load_checkpoint(ckpt).net.eval()
    datamodule = CUB200DataModule(parts_root, image_size=48, val_fraction=0.25)
    datamodule.setup()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            ours, theirs = model(batch["image"]), blackbox(batch["image"])
            assert torch.equal(ours.argmax(1), theirs.argmax(1))
            assert (ours - theirs).abs().max() < 1e-4
    V = blackbox.head.weight.double()
    assert ((V - model.prototypes.double().sum(1)).norm() / V.norm()) < 1e-6
    assert result.metrics["test/agreement"] == 1.0
    assert result.metrics["test/max_logit_gap"] < 1e-4
    assert result.metrics["test/relative_head_error"] < 1e-6


def test_artifact_is_complete_and_prototypes_are_projected(decomposed, parts_root: Path):
    _, result = decomposed
    model = PostHocPrototypeNetwork.load(result.artifacts["artifact"])
    C, k, _ = model.prototypes.shape
    assert (C, k) == (4, 3)
    assert (model.projection.labels == np.repeat(np.arange(C), k)).all()  # class-restricted
    assert (model.projection.rows >= 0).all()
    Q = C * k
    for name, shape in (("rf_boxes", (Q, 4)), ("high_activation_boxes", (Q, 4))):
        boxes = torch.as_tensor(model.extras[name])  # (Q, 4): y0 < y1, x0 < x1 inside the image
        assert tuple(boxes.shape) == shape
        assert ((boxes[:, 0] < boxes[:, 1]) & (boxes[:, 2] < boxes[:, 3])).all()
        assert boxes.min() >= 0 and boxes.max() <= 48
    ckpt = Path(model.metadata["blackbox_ckpt"])
    V = BlackBoxClassifier.load_checkpoint(ckpt).net.head.weight.double()
    assert torch.allclose(model.prototypes.double().sum(1), V, atol=1e-5)  # the recorded black box
    assert_drawn(result.run_dir / "gallery" / "prototypes.png")
    assert_drawn(result.run_dir / "gallery" / "heatmaps.png")
    # the nearest patch names its image file: the row's own file in the dataset's index
    paths = (Path(line.split()[1]) for line in (parts_root / "images.txt").read_text().splitlines())
    files = [parts_root / "images" / p for p in paths]
    for q in range(Q):
        record = model.nearest_patch(q // k, q % k)
        assert Path(record["path"]) == files[record["row"]]


def test_load_in_a_fresh_process_gives_identical_logits(decomposed, tmp_path: Path):
    _, result = decomposed
    x = torch.randn(3, 3, 48, 48)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        "from proto_lightning.models.posthoc import PostHocPrototypeNetwork\n"
        "m = PostHocPrototypeNetwork.load(sys.argv[1])\n"
        "torch.save(m(torch.load(sys.argv[2], weights_only=True)), sys.argv[3])\n"
    )
    out = tmp_path / "logits.pt"
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(result.artifacts["artifact"]),
            str(tmp_path / "x.pt"),
            str(out),
        ],
        check=True,
    )
    here = PostHocPrototypeNetwork.load(result.artifacts["artifact"])
    with torch.no_grad():
        assert torch.equal(torch.load(out), here(x))


def test_artifact_of_another_black_box_is_refused(decomposed, parts_root: Path, tmp_path: Path):
    _, result = decomposed
    other = run_blackbox(
        stage_cfg("blackbox", parts_root, tmp_path / "other", "run_test=false", "seed=1")
    )
    with pytest.raises(IncompatibleArtifactError, match="another black box"):
        PostHocPrototypeNetwork.load(
            result.artifacts["artifact"], blackbox=other.artifacts["best checkpoint"]
        )
    five = BlackBoxClassifier.load_checkpoint(other.artifacts["best checkpoint"]).net
    width = five.head.in_features
    five.head = torch.nn.Linear(width, 5)  # a black box of another class count
    with pytest.raises(IncompatibleArtifactError, match=rf"\(4, {width}\).*\(5, {width}\)"):
        PostHocPrototypeNetwork.load(result.artifacts["artifact"], blackbox=five)


def test_truncated_or_foreign_artifact_is_refused(decomposed, tmp_path: Path):
    _, result = decomposed
    data = result.artifacts["artifact"].read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompatibleArtifactError, match="truncated"):
        PostHocPrototypeNetwork.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something else"}, foreign)
    with pytest.raises(IncompatibleArtifactError, match="not a post-hoc PPN artifact"):
        PostHocPrototypeNetwork.load(foreign)
    with pytest.raises(FileNotFoundError, match="decompose"):
        PostHocPrototypeNetwork.load(tmp_path / "missing.pt")


def test_artifact_write_is_atomic(decomposed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _, result = decomposed
    model = PostHocPrototypeNetwork.load(result.artifacts["artifact"])
    target = tmp_path / "posthoc.pt"
    model.save(target)
    before = target.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save(target, {"changed": True})
    assert target.read_bytes() == before  # the old artifact is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posthoc.pt"]  # no temp file left


def test_explain_ranks_contributions_that_sum_to_the_logit(decomposed):
    _, result = decomposed
    model = PostHocPrototypeNetwork.load(result.artifacts["artifact"])
    x = torch.randn(2, 3, 48, 48)
    explanations = model.explain(x)
    logits = model(x)
    for b, e in enumerate(explanations):
        assert e.label == int(logits[b].argmax())
        assert (e.contributions[:-1] >= e.contributions[1:]).all()  # ranked
        assert torch.isclose(
            e.contributions.sum() + model.bias[e.label], logits[b, e.label], atol=1e-5
        )
        # each contribution is its heatmap's mean (docs/method.md, "The network"), computed independently
        assert torch.allclose(e.heatmaps.mean((1, 2)), e.contributions, atol=1e-5)
        assert e.upsampled.shape[-2:] == (48, 48)
        assert {"image_id", "location", "rf_box", "high_activation_box"} <= e.nearest[0].keys()
    target = model.explain(x, target=2)
    assert all(e.label == 2 for e in target)


def test_decompose_refuses_a_black_box_of_another_dataset(decomposed, tmp_path: Path):
    from proto_lightning.data.generate import make_dataset
    from proto_lightning.errors import IncompatibleWeightsError

    ckpt, _ = decomposed
    other = make_dataset(tmp_path / "six", classes=6, per_class=4, size=48)
    with pytest.raises(IncompatibleWeightsError, match="predicts 4 classes"):
        run_decompose(stage_cfg("decompose", other, tmp_path / "dec", f"blackbox_ckpt={ckpt}"))


def test_decompose_refuses_a_black_box_of_another_backbone_than_configured(
    decomposed, parts_root, tmp_path
):
    from proto_lightning.errors import IncompatibleWeightsError

    ckpt, _ = decomposed  # a small_cnn black box; an experiment that names resnet50 must not pass
    cfg = stage_cfg(
        "decompose",
        parts_root,
        tmp_path / "dec",
        f"blackbox_ckpt={ckpt}",
        "model/backbone=resnet50",
    )
    with pytest.raises(IncompatibleWeightsError, match="says 'resnet50'"):
        run_decompose(cfg)


def test_a_killed_writes_temporary_is_removed_and_modes_follow_the_umask(decomposed, tmp_path):
    """A SIGKILL leaves `.posthoc.pt.*.tmp` (no except clause runs): the next write removes it; the
    artifact gets 0644 under umask 022 like every other output, not mkstemp's private 0600."""
    _, result = decomposed
    model = PostHocPrototypeNetwork.load(result.artifacts["artifact"])
    stale = tmp_path / ".posthoc.pt.abc123.tmp"
    stale.write_bytes(b"half an artifact")
    other = tmp_path / ".other.pt.abc123.tmp"  # another target's temporary is not ours to remove
    other.write_bytes(b"x")
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "posthoc.pt")
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp", "posthoc.pt"]
    assert (tmp_path / "posthoc.pt").stat().st_mode & 0o777 == 0o644


def test_the_declared_metric_names_cover_what_decompose_reports(decomposed, parts_root, tmp_path):
    """`objective=` is checked against `reported_metrics` before a run: it must name them all."""
    _, result = decomposed
    cfg = stage_cfg("decompose", parts_root, tmp_path, "blackbox_ckpt=x.ckpt")
    assert set(result.metrics) <= reported_metrics(cfg)
