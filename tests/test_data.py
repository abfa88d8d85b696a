"""The shared datamodules: splits, keypoints in batches, image folders, and every bad input."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from proto_lightning.data import CUB200DataModule, ImageFolderDataModule
from proto_lightning.data.datamodule import stratified_val_split
from proto_lightning.errors import ConfigValueError, CorruptImageError, DatasetLayoutError
from proto_lightning.stages.blackbox import run_blackbox
from proto_lightning.stages.decompose import run_decompose
from tests.helpers import TINY, stage_cfg


def datamodule(root: Path, **kwargs) -> CUB200DataModule:
    defaults = {"image_size": 48, "batch_size": 4, "val_fraction": 0.25, "seed": 0}
    return CUB200DataModule(root, **{**defaults, **kwargs})


def test_splits_are_stratified_seeded_and_disjoint(parts_root: Path):
    dm = datamodule(parts_root)
    dm.setup()
    per_class_train = TINY["per_class"] // 2
    val_labels = dm.val_set.labels
    # stratified: 25% of the 4 train images of every class = exactly one per class
    assert np.bincount(val_labels, minlength=TINY["classes"]).tolist() == [1] * TINY["classes"]
    assert len(dm.train_set) == TINY["classes"] * (per_class_train - 1)
    assert set(dm.train_set.rows).isdisjoint(dm.val_set.rows)
    assert set(dm.train_set.rows).isdisjoint(dm.test_set.rows)
    assert (dm.push_set.rows == dm.train_set.rows).all()  # push = train without augmentation
    same, other = datamodule(parts_root), datamodule(parts_root, seed=1)
    same.setup(), other.setup()
    assert (same.val_set.rows == dm.val_set.rows).all()
    assert not (other.val_set.rows == dm.val_set.rows).all()


def test_batches_carry_keypoints_in_model_coordinates(parts_root: Path):
    dm = datamodule(parts_root, image_size=96)
    dm.setup()
    batch = next(iter(dm.push_dataloader()))
    assert batch["image"].shape == (4, 3, 96, 96)
    assert batch["keypoints"].shape == (4, dm.num_parts, 4)
    assert batch["keypoints"][0, :, 0].tolist() == list(range(1, dm.num_parts + 1))
    # eval transform = plain resize 48 -> 96: coordinates double (pixel-centre convention)
    row = int(batch["row"][0])
    original = torch.from_numpy(dm.records.keypoints[row])
    assert torch.allclose(batch["keypoints"][0, :, 1:3], original[:, :2] * 2, atol=1e-4)


def test_image_cache_decodes_each_file_once_and_changes_no_sample(parts_root: Path, monkeypatch):
    """`cache_images`: samples equal the uncached module's (same seeds, augmented and not), each
    file is read once over two epochs and every split, and no transform writes into a cached image
    (at 48 px the eval resize is the identity and returns its input)."""
    import proto_lightning.data.dataset as dataset_module

    reads: list[str] = []
    real = dataset_module.load_rgb
    monkeypatch.setattr(dataset_module, "load_rgb", lambda path: reads.append(path) or real(path))
    plain, cached = datamodule(parts_root), datamodule(parts_root, cache_images=True)
    plain.setup(), cached.setup()
    for split in ("train_set", "val_set", "test_set", "push_set"):
        for i in range(len(getattr(plain, split))):
            torch.manual_seed(i)
            want = getattr(plain, split)[i]
            torch.manual_seed(i)
            got = getattr(cached, split)[i]
            assert torch.equal(want["image"], got["image"]), (split, i)
            assert torch.equal(want["keypoints"], got["keypoints"]), (split, i)
    reads.clear()
    for _ in range(2):
        for split in ("train_set", "val_set", "test_set", "push_set"):
            for i in range(len(getattr(cached, split))):
                getattr(cached, split)[i]
    assert reads == []  # all decoded in the first pass above
    rows = {
        int(r) for split in (cached.train_set, cached.val_set, cached.test_set) for r in split.rows
    }
    assert set(cached.train_set.cache) == rows and cached.test_set.cache is cached.train_set.cache
    for row, image in cached.train_set.cache.items():
        assert torch.equal(
            image, torch.from_numpy(np.array(real(cached.records.paths[row]))).permute(2, 0, 1)
        )
    assert plain.train_set.cache is None


def test_skipping_unreadable_images_decodes_each_cached_file_once(
    parts_root: Path, tmp_path: Path, monkeypatch
):
    """on_corrupt=skip decodes every file in setup to check it; with cache_images that decode is
    the cached one, so a file is read once over setup and two passes of every split."""
    import proto_lightning.data.datamodule as datamodule_module
    import proto_lightning.data.dataset as dataset_module
    import proto_lightning.data.images as images_module

    root = tmp_path / "copy"
    shutil.copytree(parts_root, root)
    broken = sorted((root / "images").rglob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    reads: list[Path] = []
    real = images_module.load_rgb
    for module in (dataset_module, datamodule_module):  # wherever a decode is called from
        monkeypatch.setattr(
            module, "load_rgb", lambda path: reads.append(path) or real(path), raising=False
        )
    dm = datamodule(root, on_corrupt="skip", cache_images=True)
    dm.setup()
    for _ in range(2):
        for split in (dm.train_set, dm.val_set, dm.test_set, dm.push_set):
            for i in range(len(split)):
                split[i]
    assert dm.skipped == [broken]
    assert sorted(map(str, reads)) == sorted(map(str, dm.records.paths))  # each once, broken too
    kept = {int(r) for split in (dm.train_set, dm.val_set, dm.test_set) for r in split.rows}
    assert set(dm.train_set.cache) == kept and len(kept) == len(dm.records.paths) - 1


def test_bbox_crop_moves_keypoints(parts_root: Path):
    dm = datamodule(parts_root, crop_to_bbox=True)
    dm.setup()
    sample = dm.test_set[0]
    row = sample["row"]
    x, y, w, h = (round(float(v)) for v in dm.records.boxes[row])
    original = dm.records.keypoints[row]
    expected_x = (original[:, 0] - x) * 48 / w
    visible = sample["keypoints"][:, 3] == 1
    assert np.allclose(
        sample["keypoints"][visible, 1].numpy(), expected_x[visible.numpy()], atol=1e-3
    )


def test_missing_root_names_the_expected_layout(tmp_path: Path):
    with pytest.raises(DatasetLayoutError, match="(?s)does not exist.*images.txt"):
        datamodule(tmp_path / "nowhere").setup()


@pytest.mark.parametrize("missing", ["images.txt", "train_test_split.txt", "classes.txt"])
def test_missing_index_file_is_named(parts_root: Path, tmp_path: Path, missing: str):
    root = tmp_path / "copy"
    shutil.copytree(parts_root, root)
    (root / missing).unlink()
    with pytest.raises(DatasetLayoutError, match=f"missing .*{missing}"):
        datamodule(root).setup()


def test_missing_boxes_named_only_when_cropping(parts_root: Path, tmp_path: Path):
    root = tmp_path / "copy"
    shutil.copytree(parts_root, root)
    (root / "bounding_boxes.txt").unlink()
    datamodule(root).setup()  # fine without crop
    with pytest.raises(DatasetLayoutError, match="bounding_boxes.txt"):
        datamodule(root, crop_to_bbox=True).setup()


def test_corrupt_image_error_names_the_file_or_is_skipped(parts_root: Path, tmp_path: Path):
    root = tmp_path / "copy"
    shutil.copytree(parts_root, root)
    dm = datamodule(root)
    dm.setup()
    broken = dm.records.paths[int(dm.test_set.rows[0])]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(CorruptImageError, match=broken.name):
        dm.test_set[0]
    skipping = datamodule(root, on_corrupt="skip")
    skipping.setup()
    assert skipping.skipped == [broken]
    assert len(skipping.test_set) == len(dm.test_set) - 1
    assert len(list(skipping.test_dataloader())) > 0


def test_image_folder_datamodule(tmp_path: Path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 2)):
        for name in ("cars", "dogs"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
                    tmp_path / split / name / f"{i}.png"
                )
    dm = ImageFolderDataModule(tmp_path, image_size=32, batch_size=4, val_fraction=0.25)
    dm.setup()
    assert dm.num_classes == 2 and dm.records.class_names == ["cars", "dogs"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 4, 4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["keypoints"].shape == (4, 0, 4)
    with pytest.raises(DatasetLayoutError, match="test"):
        ImageFolderDataModule(tmp_path / "train").setup()


def test_a_validation_fraction_too_small_for_a_stratified_split_says_what_works():
    """3 classes x 6 training images: 0.1 gives 2 validation images for 3 classes (scikit-learn:
    'test_size = 2 should be greater or equal to the number of classes = 3')."""
    rows, labels = np.arange(18), np.repeat(np.arange(3), 6)
    with pytest.raises(ConfigValueError, match=r"between 0\.167 and 0\.833.*val_fraction=0"):
        stratified_val_split(rows, labels, 0.1, seed=0)
    train, val = stratified_val_split(rows, labels, 0.2, seed=0)  # ceil(3.6) = 4 >= 3
    assert len(val) == 4 and set(labels[val]) == {0, 1, 2}
    assert len(stratified_val_split(rows, labels, 0.0, seed=0)[1]) == 0


def test_no_validation_split_tests_the_last_checkpoint(stage_config):
    result = run_blackbox(stage_config("blackbox", "data.val_fraction=0", "trainer.max_epochs=2"))
    assert "best checkpoint" not in result.artifacts and "test/acc" in result.metrics
    assert result.artifacts["last checkpoint"].is_file()


def test_an_empty_class_folder_is_refused_naming_it(tmp_path: Path):
    """It used to be accepted: decompose then drew that class's prototypes on another class's image."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cars", "dogs"):
            (tmp_path / split / name).mkdir(parents=True)
    for i in range(4):
        image = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
        image.save(tmp_path / "train" / "cars" / f"{i}.png")
        image.save(tmp_path / "test" / "cars" / f"{i}.png")
        image.save(tmp_path / "test" / "dogs" / f"{i}.png")
    with pytest.raises(DatasetLayoutError, match=r"train/dogs holds no image"):
        ImageFolderDataModule(tmp_path, image_size=32).setup()


def test_decompose_refuses_a_class_without_training_images(parts_root, tmp_path, tiny_demo):
    """The same 4 classes, but class 4's images all moved to the test split."""
    data = tmp_path / "parts"
    shutil.copytree(parts_root, data)
    labels = dict(
        line.split() for line in (data / "image_class_labels.txt").read_text().split("\n") if line
    )
    split = [line.split() for line in (data / "train_test_split.txt").read_text().splitlines()]
    moved = [f"{i} {0 if labels[i] == '4' else flag}" for i, flag in split]
    (data / "train_test_split.txt").write_text("\n".join(moved) + "\n")
    best = tiny_demo.artifacts["blackbox best checkpoint"]
    cfg = stage_cfg("decompose", data, tmp_path / "run", f"blackbox_ckpt={best}")
    with pytest.raises(DatasetLayoutError, match=r"no training images"):
        run_decompose(cfg)


@pytest.mark.parametrize("crop", [False, True])
def test_reference_keypoints_of_a_sample_use_its_crop_and_the_model_input_size(
    parts_root: Path, crop: bool
):
    """The reference places a test image's keypoints by its integer arithmetic on the crop it uses
    (the bounding box, or the whole image): every visible keypoint, in the 48-pixel input."""
    dm = datamodule(parts_root, crop_to_bbox=crop)
    dm.setup()
    row = int(dm.test_set.rows[0])
    with Image.open(dm.records.paths[row]) as image:
        width, height = image.size
    x1, y1, x2, y2 = 0, 0, width, height
    if crop:
        bx, by, bw, bh = (int(v) for v in dm.records.boxes[row])
        x1, y1, x2, y2 = bx, by, bx + bw, by + bh
    expected = [
        [part + 1, int(48 * ((int(x) - x1) / (x2 - x1))), int(48 * ((int(y) - y1) / (y2 - y1))), v]
        for part, (x, y, v) in enumerate(dm.records.keypoints[row].tolist())
    ]
    assert dm.test_set.reference_keypoints(row).tolist() == expected
