"""A deterministic generator of a small bird-like part dataset written in the CUB-200-2011 layout.

Each object is drawn from six named parts (beak, head, body, wing, tail, legs) in an object frame
(body centre at the origin, facing +x, unit = object length), then posed by a random scale,
rotation, horizontal flip and position onto a cluttered background, always whole inside the frame
(a class is only decidable when its head, wing and tail can all be seen). A class is a combination of
three discriminative part attributes: head colour, wing pattern and tail shape; body, beak and legs
look the same in every class (only jittered), so only some parts are discriminative. Tail, body
and head have a dark edge, so the body-coloured tail's silhouette shows on any clutter. The true part
centres are written to `parts/part_locs.txt`, so interpretability metrics can be checked for meaning.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from proto_lightning.atomic import umask_mode
from proto_lightning.errors import ConfigValueError, DatasetExistsError

log = logging.getLogger(__name__)

PART_NAMES = ("beak", "head", "body", "wing", "tail", "legs")
HEAD_COLOURS = {
    "Red": (200, 40, 40),
    "Blue": (40, 70, 210),
    "Yellow": (230, 200, 30),
    "Green": (40, 160, 60),
}
WING_PATTERNS = ("Plain", "Striped", "Spotted")
TAIL_SHAPES = ("Fan", "Pointed", "Forked")
BODY_COLOUR = (150, 110, 80)
WING_COLOUR = (90, 70, 60)
BEAK_COLOUR = (240, 150, 30)
LEG_COLOUR = (60, 40, 20)
EDGE_COLOUR = (25, 20, 15)  # a dark silhouette edge: the tail's shape shows on any background
EDGE_WIDTH = 0.02  # of the object length

# Part geometry in the object frame: (centre x, centre y, radius x, radius y).
BODY = (0.0, 0.0, 0.30, 0.17)
HEAD = (0.36, -0.17, 0.12, 0.12)
WING = (-0.03, -0.03, 0.19, 0.09)
BEAK = ((0.46, -0.21), (0.63, -0.16), (0.46, -0.12))
TAIL_PIVOT, TAIL_FAN_RADIUS = (-0.24, 0.0), 0.38
TAIL = {  # silhouettes that differ along their whole length, not only at the tip
    "Fan": (  # a solid wedge widening from the body to a round edge
        ((-0.24, -0.05),)
        + tuple(
            (TAIL_PIVOT[0] - TAIL_FAN_RADIUS * np.cos(t), TAIL_FAN_RADIUS * np.sin(t))
            for t in np.deg2rad(np.linspace(-34, 34, 7))
        )
        + ((-0.24, 0.06),)
    ),
    "Pointed": ((-0.24, -0.05), (-0.70, 0.0), (-0.24, 0.06)),  # one long thin spike
    "Forked": (  # two thin prongs around a deep notch
        (-0.24, -0.05),
        (-0.68, -0.22),
        (-0.62, -0.10),
        (-0.36, 0.0),
        (-0.62, 0.10),
        (-0.68, 0.22),
        (-0.24, 0.06),
    ),
}
LEGS = (((-0.05, 0.15), (-0.08, 0.38)), ((0.06, 0.15), (0.09, 0.38)))
PART_CENTRES = {
    "beak": (0.52, -0.16),
    "head": HEAD[:2],
    "body": (0.0, 0.06),  # below the wing, on the body's own pixels
    "wing": WING[:2],
    "tail": (-0.46, 0.0),
    "legs": (0.0, 0.30),
}


@dataclass(frozen=True)
class BirdClass:
    """The discriminative attributes that define one class."""

    head: str
    wing: str
    tail: str

    @property
    def name(self) -> str:
        """CUB-style class name, e.g. `Red_Striped_Fan_Bird`."""
        return f"{self.head}_{self.wing}_{self.tail}_Bird"


def make_classes(num_classes: int, seed: int) -> list[BirdClass]:
    """Choose `num_classes` distinct attribute combinations, seeded."""
    combos = list(itertools.product(HEAD_COLOURS, WING_PATTERNS, TAIL_SHAPES))
    if not 1 <= num_classes <= len(combos):
        raise ValueError(f"classes must be in 1..{len(combos)}, got {num_classes}")
    order = np.random.default_rng(seed).permutation(len(combos))[:num_classes]
    return [BirdClass(*combos[i]) for i in sorted(order)]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int = 18) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


class _Pose:
    """Object frame -> image pixels: scale, rotation, optional flip, and a translation that keeps the
    whole object (`outline`, object-frame points) inside the image, so every class-defining part
    can be seen."""

    def __init__(self, rng: np.random.Generator, size: int, outline: np.ndarray) -> None:
        self.scale = size * rng.uniform(0.5, 0.72)
        angle = np.deg2rad(rng.uniform(-30, 30))
        flip = -1.0 if rng.random() < 0.5 else 1.0
        c, s = np.cos(angle), np.sin(angle)
        self.matrix = self.scale * np.array([[c, -s], [s, c]]) @ np.diag([flip, 1.0])
        posed = outline @ self.matrix.T  # (n, 2) around the origin
        low = 1.0 - posed.min(axis=0)  # the offsets that keep the object 1 px inside
        high = np.maximum(low, size - 2.0 - posed.max(axis=0))
        self.offset = rng.uniform(low, high)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.matrix.T + self.offset

    def polygon(self, points: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in self(points)]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(60, 200, size=3)
    gradient = np.linspace(-30, 30, size)[:, None, None] * rng.uniform(-1, 1, size=3)
    pixels = np.clip(base + gradient + rng.normal(0, 8, (size, size, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(12, 24))):  # clutter: muted blobs, boxes, twigs
        colour = tuple(int(v) for v in rng.integers(40, 220, size=3))
        x0, y0 = rng.uniform(-0.1, 1.0, size=2) * size
        w, h = rng.uniform(0.03, 0.25, size=2) * size
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([x0, y0, x0 + w, y0 + h * rng.choice([-1, 1])], fill=colour, width=2)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def _draw_wing_pattern(draw: ImageDraw.ImageDraw, pose: _Pose, pattern: str, colour: tuple) -> None:
    cx, cy, rx, ry = WING
    if pattern == "Striped":  # bars across the wing, clipped to the ellipse analytically
        for x in np.linspace(cx - 0.75 * rx, cx + 0.75 * rx, 5):
            half = ry * np.sqrt(max(0.0, 1 - ((x - cx) / rx) ** 2))
            bar = np.array(
                [
                    [x - 0.012, cy - half],
                    [x + 0.012, cy - half],
                    [x + 0.012, cy + half],
                    [x - 0.012, cy + half],
                ]
            )
            draw.polygon(pose.polygon(bar), fill=colour)
    elif pattern == "Spotted":
        for dx, dy in itertools.product((-0.5, 0.0, 0.5), (-0.4, 0.4)):
            draw.polygon(
                pose.polygon(_ellipse(cx + dx * rx, cy + dy * ry, 0.028, 0.028, 12)), fill=colour
            )


def bird_outline(tail: str) -> np.ndarray:
    """Every vertex of a bird with this tail shape, in the object frame: (n, 2)."""
    parts = [np.array(TAIL[tail]), *(_ellipse(*part) for part in (BODY, WING, HEAD))]
    return np.concatenate([*parts, np.array(BEAK), np.array(LEGS).reshape(-1, 2)])


def render_bird(
    bird: BirdClass, rng: np.random.Generator, size: int
) -> tuple[Image.Image, np.ndarray, tuple[float, float, float, float]]:
    """Draw one posed bird on clutter; return image, part keypoints (P, 3) and its box x, y, w, h."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    tail = np.array(TAIL[bird.tail])
    body, wing, head = (_ellipse(*part) for part in (BODY, WING, HEAD))
    outline = bird_outline(bird.tail)
    pose = _Pose(rng, size, outline)
    edge = {"outline": EDGE_COLOUR, "width": max(1, round(pose.scale * EDGE_WIDTH))}
    draw.polygon(pose.polygon(tail), fill=_jitter(BODY_COLOUR, rng), **edge)
    for leg in LEGS:
        draw.line(
            pose.polygon(np.array(leg)), fill=LEG_COLOUR, width=max(1, int(pose.scale * 0.025))
        )
    draw.polygon(pose.polygon(body), fill=_jitter(BODY_COLOUR, rng), **edge)
    draw.polygon(pose.polygon(wing), fill=_jitter(WING_COLOUR, rng))
    _draw_wing_pattern(draw, pose, bird.wing, _jitter((235, 235, 220), rng, 10))
    draw.polygon(pose.polygon(head), fill=_jitter(HEAD_COLOURS[bird.head], rng), **edge)
    eye = _ellipse(HEAD[0] + 0.04, HEAD[1] - 0.03, 0.02, 0.02, 10)
    draw.polygon(pose.polygon(eye), fill=(10, 10, 10))
    draw.polygon(pose.polygon(np.array(BEAK)), fill=_jitter(BEAK_COLOUR, rng))

    xy = pose(np.array([PART_CENTRES[p] for p in PART_NAMES]))  # (P, 2)
    visible = (xy >= 0).all(axis=1) & (xy < size).all(axis=1)
    keypoints = np.concatenate([xy, visible[:, None]], axis=1)
    corners = pose(outline)
    lo = np.clip(corners.min(axis=0), 0, size - 1)
    hi = np.clip(corners.max(axis=0), 0, size - 1)
    return image, keypoints, (lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1])


def make_dataset(
    out: str | Path,
    classes: int = 10,
    per_class: int = 100,
    size: int = 96,
    seed: int = 0,
    train_fraction: float = 0.6,
    overwrite: bool = False,
) -> Path:
    """Write the generated part dataset to `out` in the CUB-200-2011 layout; return `out`.

    Every image is drawn from its own generator seeded by (seed, class, index), so the output is
    byte-for-byte reproducible and independent of the order of writing. An existing non-empty `out`
    is refused unless `overwrite`; then the new dataset is written beside it and replaces it whole,
    so no file of the old one (e.g. a class folder it had and the new one has not) is left.
    """
    n_train = int(round(per_class * train_fraction))
    if not 1 <= n_train <= per_class - 1:
        raise ConfigValueError(
            f"train_fraction={train_fraction} puts {n_train} of each class's {per_class} images in "
            "train; every class needs at least one train and one test image: choose a fraction in "
            f"({0.5 / per_class:.3f}, {1 - 0.5 / per_class:.3f}) or more images per class"
        )
    final = Path(out)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise DatasetExistsError(
            f"{final} already exists and is not empty; pass --overwrite (overwrite=True) to "
            "replace it, or choose another --out"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        _write_dataset(out, classes, per_class, size, seed, train_fraction)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    out.chmod(umask_mode(directory=True))  # mkdtemp makes it private
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    log.info("wrote the part dataset of %d classes to %s", classes, final)
    return final


def _write_dataset(
    out: Path, classes: int, per_class: int, size: int, seed: int, train_fraction: float
) -> None:
    """The images and index files of `make_dataset`, into the (new, empty) folder `out`."""
    birds = make_classes(classes, seed)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    images, labels, split, boxes, locs = [], [], [], [], []
    n_train = int(round(per_class * train_fraction))
    image_id = 0
    for c, bird in enumerate(birds):
        folder = f"{c + 1:03d}.{bird.name}"
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image_id += 1
            rng = np.random.default_rng([seed, c, i])
            image, keypoints, box = render_bird(bird, rng, size)
            rel = f"{folder}/{bird.name}_{i + 1:04d}.jpg"
            image.save(out / "images" / rel, quality=95)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {int(i < n_train)}")
            boxes.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
            locs += [
                f"{image_id} {p + 1} {x:.1f} {y:.1f} {int(v)}"
                for p, (x, y, v) in enumerate(keypoints)
            ]
    tables = {
        "images.txt": images,
        "image_class_labels.txt": labels,
        "train_test_split.txt": split,
        "bounding_boxes.txt": boxes,
        "classes.txt": [f"{c + 1} {c + 1:03d}.{b.name}" for c, b in enumerate(birds)],
        "parts/parts.txt": [f"{p + 1} {name}" for p, name in enumerate(PART_NAMES)],
        "parts/part_locs.txt": locs,
    }
    for name, lines in tables.items():
        (out / name).write_text("\n".join(lines) + "\n")
