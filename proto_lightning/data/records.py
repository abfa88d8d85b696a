"""Dataset indexes: the CUB-200-2011 on-disk layout and class-folder datasets, read into one record type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proto_lightning.errors import DatasetLayoutError

CUB_LAYOUT = """\
<root>/images.txt               <image_id> <relative path under images/>
<root>/image_class_labels.txt   <image_id> <class_id, 1-based>
<root>/train_test_split.txt     <image_id> <1 = train, 0 = test>
<root>/classes.txt              <class_id> <class name>
<root>/bounding_boxes.txt       <image_id> <x> <y> <width> <height>   (needed for crop_to_bbox)
<root>/parts/parts.txt          <part_id> <part name>                 (optional, with part_locs.txt)
<root>/parts/part_locs.txt      <image_id> <part_id> <x> <y> <visible>
<root>/images/<class folder>/<file>.jpg"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageRecords:
    """Everything a dataset index says about its images, in row order.

    `labels` are 0-based; `keypoints` is (N, P, 3) with x, y in original image pixels and a 0/1
    visibility flag (P = 0 for datasets without part annotations); `boxes` is (N, 4) x, y, w, h.
    """

    paths: list[Path]
    image_ids: np.ndarray  # (N,) int64, the dataset's own ids
    labels: np.ndarray  # (N,) int64
    is_train: np.ndarray  # (N,) bool
    boxes: np.ndarray | None  # (N, 4) float32
    keypoints: np.ndarray  # (N, P, 3) float32
    class_names: list[str]
    part_names: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes in the index."""
        return len(self.class_names)


def _require(path: Path, root: Path) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(
            f"missing {path} in dataset root {root}. A CUB-200-2011-layout dataset needs:\n"
            f"{CUB_LAYOUT}\nPoint data.root at such a folder, or generate one with "
            "`proto-lightning make-dataset --out data/parts`."
        )
    return path


def _read_table(path: Path, columns: int) -> list[list[str]]:
    """Read whitespace-separated rows, checking the column count (the last column keeps spaces)."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns:
            raise DatasetLayoutError(
                f"{path}:{number}: expected {columns} columns, found {len(fields)}: {line!r}"
            )
        rows.append(fields)
    return rows


def _ids_to_rows(path: Path, rows: list[list[str]], position: dict[int, int]) -> np.ndarray:
    ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
    unknown = set(ids.tolist()) - position.keys()
    if unknown or len(ids) != len(position):
        raise DatasetLayoutError(
            f"{path} must list every image id of images.txt exactly once; "
            f"{len(ids)} rows for {len(position)} images, unknown ids: {sorted(unknown)[:5]}"
        )
    return np.array([position[i] for i in ids.tolist()], dtype=np.int64)


def read_cub_layout(root: str | Path, need_boxes: bool = False) -> ImageRecords:
    """Read a dataset in the CUB-200-2011 layout (docs/own-model.md, "Real data") into `ImageRecords`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(
            f"dataset root {root} does not exist. Expected a folder with:\n{CUB_LAYOUT}\n"
            "Generate the default one with `proto-lightning make-dataset --out data/parts`."
        )
    images = _read_table(_require(root / "images.txt", root), 2)
    ids = np.array([int(r[0]) for r in images], dtype=np.int64)
    position = {int(i): n for n, i in enumerate(ids.tolist())}
    paths = [root / "images" / r[1] for r in images]

    labels = np.zeros(len(ids), dtype=np.int64)
    label_rows = _read_table(_require(root / "image_class_labels.txt", root), 2)
    labels[_ids_to_rows(root / "image_class_labels.txt", label_rows, position)] = [
        int(r[1]) - 1 for r in label_rows
    ]
    is_train = np.zeros(len(ids), dtype=bool)
    split_rows = _read_table(_require(root / "train_test_split.txt", root), 2)
    is_train[_ids_to_rows(root / "train_test_split.txt", split_rows, position)] = [
        r[1] == "1" for r in split_rows
    ]
    class_rows = _read_table(_require(root / "classes.txt", root), 2)
    class_names = [r[1] for r in sorted(class_rows, key=lambda r: int(r[0]))]
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(class_names):
        raise DatasetLayoutError(
            f"{root / 'image_class_labels.txt'} uses class ids outside 1..{len(class_names)} "
            f"listed in {root / 'classes.txt'}"
        )

    boxes = None
    if need_boxes or (root / "bounding_boxes.txt").is_file():
        box_rows = _read_table(_require(root / "bounding_boxes.txt", root), 5)
        boxes = np.zeros((len(ids), 4), dtype=np.float32)
        boxes[_ids_to_rows(root / "bounding_boxes.txt", box_rows, position)] = [
            [float(v) for v in r[1:]] for r in box_rows
        ]

    part_names: list[str] = []
    keypoints = np.zeros((len(ids), 0, 3), dtype=np.float32)
    parts_file, locs_file = root / "parts" / "parts.txt", root / "parts" / "part_locs.txt"
    if parts_file.is_file() or locs_file.is_file():
        part_rows = _read_table(_require(parts_file, root), 2)
        part_names = [r[1] for r in sorted(part_rows, key=lambda r: int(r[0]))]
        locs = np.loadtxt(_require(locs_file, root), dtype=np.float64, ndmin=2)
        if locs.shape[1] != 5:
            raise DatasetLayoutError(f"{locs_file}: expected 5 columns, found {locs.shape[1]}")
        keypoints = np.zeros((len(ids), len(part_names), 3), dtype=np.float32)
        img_rows = np.array([position.get(int(i), -1) for i in locs[:, 0]])
        part_idx = locs[:, 1].astype(np.int64) - 1
        bad = (img_rows < 0) | (part_idx < 0) | (part_idx >= len(part_names))
        if bad.any():
            raise DatasetLayoutError(
                f"{locs_file}: {int(bad.sum())} rows name an unknown image or part id "
                f"(first: {locs[bad][0].tolist()})"
            )
        keypoints[img_rows, part_idx] = locs[:, 2:5]
    return ImageRecords(paths, ids, labels, is_train, boxes, keypoints, class_names, part_names)


def class_folders(folder: Path) -> list[str]:
    """The class folder names in `folder`, sorted; hidden ones (`.ipynb_checkpoints`, `.git`) are no class."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image_folders(root: str | Path) -> ImageRecords:
    """Read `<root>/train/<class>/*` and `<root>/test/<class>/*` (Stanford Cars/Dogs prepared so)."""
    root = Path(root)
    splits = {name: root / name for name in ("train", "test")}
    for folder in splits.values():
        if not folder.is_dir():
            raise DatasetLayoutError(
                f"missing {folder}: an image-folder dataset needs {root}/train/<class>/<image> "
                f"and {root}/test/<class>/<image>, with the same class folder names in both"
            )
    class_names, test_classes = (class_folders(splits[name]) for name in ("train", "test"))
    if not class_names or set(test_classes) - set(class_names):
        raise DatasetLayoutError(
            f"class folders of {splits['test']} ({test_classes[:5]}...) must be a non-empty subset "
            f"of those of {splits['train']} ({class_names[:5]}...)"
        )
    paths, labels, is_train = [], [], []
    for split, folder in splits.items():
        for label, name in enumerate(class_names):
            files = sorted(
                p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files and (folder / name).is_dir():
                raise DatasetLayoutError(
                    f"class folder {folder / name} holds no image ({', '.join(IMAGE_SUFFIXES)}): "
                    "add its images or remove the folder"
                )
            paths += files
            labels += [label] * len(files)
            is_train += [split == "train"] * len(files)
    n = len(paths)
    return ImageRecords(
        paths=paths,
        image_ids=np.arange(1, n + 1, dtype=np.int64),
        labels=np.array(labels, dtype=np.int64),
        is_train=np.array(is_train, dtype=bool),
        boxes=None,
        keypoints=np.zeros((n, 0, 3), dtype=np.float32),
        class_names=class_names,
        part_names=[],
    )
