"""The part-dataset generator writes a valid CUB layout, deterministically, with meaningful keypoints."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proto_lightning.cli import console_main
from proto_lightning.data.generate import HEAD_COLOURS, PART_NAMES, make_dataset
from proto_lightning.errors import DatasetExistsError
from tests.helpers import TINY


def read_table(path: Path) -> list[list[str]]:
    """An independent minimal reader: whitespace-separated rows."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()


def test_layout_is_valid_cub(parts_root: Path):
    n = TINY["classes"] * TINY["per_class"]
    images = read_table(parts_root / "images.txt")
    assert [int(r[0]) for r in images] == list(range(1, n + 1))
    classes = read_table(parts_root / "classes.txt")
    assert len(classes) == TINY["classes"]
    labels = {int(a): int(b) for a, b in read_table(parts_root / "image_class_labels.txt")}
    split = {int(a): int(b) for a, b in read_table(parts_root / "train_test_split.txt")}
    assert set(labels.values()) == set(range(1, TINY["classes"] + 1))
    assert sum(split.values()) == n // 2
    for image_id, rel in images:
        folder = rel.split("/")[0]
        assert folder == classes[labels[int(image_id)] - 1][1]  # image sits in its class folder
        with Image.open(parts_root / "images" / rel) as im:
            assert im.size == (TINY["size"], TINY["size"]) and im.mode == "RGB"
    boxes = np.array(
        [[float(v) for v in r[1:]] for r in read_table(parts_root / "bounding_boxes.txt")]
    )
    assert boxes.shape == (n, 4) and (boxes[:, 2:] > 0).all()
    parts = read_table(parts_root / "parts" / "parts.txt")
    assert [p[1] for p in parts] == list(PART_NAMES) and len(parts) >= 5
    locs = np.array(read_table(parts_root / "parts" / "part_locs.txt"), dtype=float)
    assert locs.shape == (n * len(PART_NAMES), 5)
    assert set(np.unique(locs[:, 4])) <= {0.0, 1.0}


def test_deterministic_for_a_seed(tmp_path: Path, parts_root: Path):
    again = make_dataset(tmp_path / "again", **TINY)
    other = make_dataset(tmp_path / "other", **{**TINY, "seed": 1})
    assert digest(again) == digest(parts_root)
    assert digest(other) != digest(parts_root)


def test_head_keypoint_lies_on_the_class_head_colour(tmp_path: Path):
    """Keypoints mean something: the pixel at the head keypoint has the class's head colour."""
    root = make_dataset(tmp_path / "big", classes=6, per_class=4, size=128, seed=3)
    names = [r[1] for r in read_table(root / "classes.txt")]
    images = dict(read_table(root / "images.txt"))
    labels = dict(read_table(root / "image_class_labels.txt"))
    head = PART_NAMES.index("head") + 1
    hits = total = 0
    for image_id, part, x, y, visible in read_table(root / "parts" / "part_locs.txt"):
        if int(part) != head or visible != "1":
            continue
        colour_name = names[int(labels[image_id]) - 1].split(".")[1].split("_")[0]
        pixel = np.array(
            Image.open(root / "images" / images[image_id]).getpixel((float(x), float(y)))
        )
        hits += np.abs(pixel - np.array(HEAD_COLOURS[colour_name])).max() < 60
        total += 1
    assert total > 10 and hits / total > 0.9


def test_an_existing_dataset_is_refused_unless_overwrite_then_replaced_whole(tmp_path):
    out = make_dataset(tmp_path / "parts", classes=3, per_class=2, size=32)
    before = (out / "images.txt").read_text()
    with pytest.raises(DatasetExistsError, match="--overwrite"):
        make_dataset(out, classes=2, per_class=2, size=32)
    assert (out / "images.txt").read_text() == before  # untouched
    old = os.umask(0o022)
    try:
        make_dataset(out, classes=2, per_class=2, size=32, overwrite=True)
    finally:
        os.umask(old)
    folders = sorted(p.name for p in (out / "images").iterdir())
    assert len(folders) == 2  # the third class's folder of the old dataset is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]  # no temporary left
    assert out.stat().st_mode & 0o777 == 0o755


def test_make_dataset_cli_says_how_to_replace(tmp_path, capsys):
    make_dataset(tmp_path / "parts", classes=2, per_class=2, size=32)
    assert console_main(["make-dataset", "--out", str(tmp_path / "parts"), "--classes", "2"]) == 1
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.95, 1.0, 1.5])
def test_a_split_without_train_or_test_images_is_refused_before_writing(tmp_path, capsys, fraction):
    """4 images per class: 0.1 rounds to no train image and 0.95 to no test image."""
    args = ["--out", str(tmp_path / "d"), "--classes", "2", "--per-class", "4", "--size", "32"]
    assert console_main(["make-dataset", *args, "--train-fraction", str(fraction)]) == 1
    assert "at least one train and one test image" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_every_bird_is_whole_inside_the_frame():
    """A class is decidable only when its head, wing and tail can be seen: every part keypoint of
    every image is visible and the object's box lies inside the image (200 draws, two sizes)."""
    import numpy as np

    from proto_lightning.data.generate import make_classes, render_bird

    for size in (48, 128):
        for i, bird in enumerate(make_classes(10, seed=0) * 20):
            image, keypoints, (x, y, w, h) = render_bird(bird, np.random.default_rng(i), size)
            assert image.size == (size, size)
            assert keypoints[:, 2].all(), (size, i)
            assert x >= 0 and y >= 0 and x + w <= size - 1 and y + h <= size - 1


@pytest.mark.parametrize("tail", ["Fan", "Pointed", "Forked"])
def test_the_tail_tip_has_a_dark_edge_on_any_background(tail: str):
    """The tail is the body's colour, so its shape is told from the clutter by a dark edge: the
    pixel at the posed tip (the tail's farthest vertex from the body) is the edge colour in every
    one of 20 draws."""
    from proto_lightning.data import generate as g

    bird = g.BirdClass("Red", "Plain", tail)
    tip = np.array(min(g.TAIL[tail], key=lambda p: p[0]))  # smallest x: farthest from the body
    for i in range(20):
        rng = np.random.default_rng(i)
        image, _, _ = g.render_bird(bird, rng, 128)
        # the same pose again: render_bird draws the background, then the pose
        pose_rng = np.random.default_rng(i)
        g._background(pose_rng, 128)
        x, y = g._Pose(pose_rng, 128, g.bird_outline(tail))(tip[None])[0]
        pixel = np.asarray(image, dtype=int)[int(y), int(x)]
        assert np.abs(pixel - np.array(g.EDGE_COLOUR)).max() <= 40, (i, pixel)


def test_generator_starts_without_torch():
    """`make-dataset` is the demo's first step: importing the generator must not pull in torch or
    Lightning (12 s of the 18 s it took), while the package's public names still resolve."""
    code = (
        "import sys\n"
        "import proto_lightning.data.generate\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import proto_lightning.data as data
    from proto_lightning.data import CUB200DataModule, read_cub_layout

    assert CUB200DataModule.__module__ == "proto_lightning.data.datamodule"
    assert read_cub_layout.__module__ == "proto_lightning.data.records"
    assert not hasattr(data, "NoSuchName")
