"""The class-ordered feature store: every patch where the layout says, in RAM or spilled to disk."""

from pathlib import Path

import numpy as np
import pytest
import torch

from proto_lightning.prototypes.features import allocate, collect_features


def coordinates(images: torch.Tensor) -> torch.Tensor:
    """A stand-in feature map (B, 3, 2, 3) that spells out where each patch came from:
    channel 0 the image's pixel value (its dataset row), channels 1, 2 the patch's h and w."""
    B = len(images)
    h = torch.arange(2.0)[:, None].expand(2, 3)
    w = torch.arange(3.0)[None, :].expand(2, 3)
    row = images[:, 0, 0, 0][:, None, None].expand(B, 2, 3)
    return torch.stack([row, h.expand(B, 2, 3), w.expand(B, 2, 3)], dim=1)


def batches(labels: list[int], batch_size: int) -> list[dict[str, torch.Tensor]]:
    rows = torch.arange(len(labels)) * 10 + 5  # dataset rows need not be 0..n-1
    return [
        {
            "image": rows[i : i + batch_size, None, None, None].float().expand(-1, 3, 4, 4),
            "label": torch.tensor(labels[i : i + batch_size]),
            "row": rows[i : i + batch_size],
            "image_id": rows[i : i + batch_size] + 1000,
        }
        for i in range(0, len(labels), batch_size)
    ]


def test_patches_are_laid_out_class_by_class_in_loader_order(tmp_path: Path):
    labels = [2, 0, 2, 1, 0, 2, 2]  # class sizes 2, 1, 4; batches cut across classes
    store = collect_features(
        coordinates, batches(labels, 3), np.array(labels), 3, 1.0, tmp_path, "cpu"
    )
    assert store.map_size == (2, 3)
    assert store.offsets.tolist() == [0, 12, 18, 42]  # 6 patches per image
    rows = np.arange(7) * 10 + 5
    for c in range(3):
        mine = rows[np.array(labels) == c]  # this class's images, in the loader's order
        expected = np.array([[r, h, w] for r in mine for h in range(2) for w in range(3)])
        assert np.array_equal(store.class_slice(c), expected)
        part = slice(store.offsets[c], store.offsets[c + 1])
        assert np.array_equal(store.rows[part], expected[:, 0])
        assert np.array_equal(store.image_ids[part], expected[:, 0] + 1000)
        assert np.array_equal(store.locations[part], expected[:, 1:])
        assert (store.labels[part] == c).all()


def test_store_spills_to_a_memory_map_past_the_budget(tmp_path: Path):
    """256 x 1024 float32 = exactly 1 MiB: in RAM at a 1 MiB budget, memory-mapped below it."""
    mib = 1 / 1024  # GiB
    assert not isinstance(allocate(256, 1024, mib, tmp_path / "a"), np.memmap)
    spilled = allocate(256, 1024, mib * 0.999, tmp_path / "b" / "c")  # folders made as needed
    assert isinstance(spilled, np.memmap) and spilled.shape == (256, 1024)
    assert (tmp_path / "b" / "c" / "push_features.f32").stat().st_size >= 256 * 1024 * 4
    assert allocate(1, 1, 0.0, tmp_path / "b" / "c").shape == (1, 1)  # the folder is reused
    labels = [0, 1, 1]
    in_ram = collect_features(coordinates, batches(labels, 2), np.array(labels), 2, 1.0, tmp_path)
    on_disk = collect_features(coordinates, batches(labels, 2), np.array(labels), 2, 0.0, tmp_path)
    assert isinstance(on_disk.features, np.memmap)
    assert np.array_equal(np.asarray(on_disk.features), in_ram.features)


def test_an_empty_or_mislabelled_loader_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="empty"):
        collect_features(coordinates, [], np.array([], dtype=int), 2, 1.0, tmp_path)
    with pytest.raises(ValueError, match="other images"):
        collect_features(coordinates, batches([0, 1], 2), np.array([0, 0]), 2, 1.0, tmp_path)
    with pytest.raises(ValueError, match="other images"):  # more of a class than `labels` holds
        collect_features(coordinates, batches([0, 0], 2), np.array([0, 1]), 2, 1.0, tmp_path)
