"""Consistency and stability (Huang et al. 2023, EvalProtoPNet) on hand-made cases with known answers."""

import torch

from proto_lightning.evaluation.scores import part_coverage
from proto_lightning.metrics.part_consistency import (
    consistency,
    covered_parts,
    part_frequencies,
    region_half_size,
    stability,
    visible_parts,
)

S = 40  # input size; activation maps at full size, so upsampling does not move the peak


def one_hot_map(y: int, x: int) -> torch.Tensor:
    m = torch.zeros(S, S)
    m[y, x] = 1.0
    return m


def test_region_is_inclusive_and_clipped_as_the_reference():
    activations = one_hot_map(5, 5)[None, None]  # peak (y=5, x=5), half-size 3: rows/cols [2, 8]
    keypoints = torch.tensor(
        [[[1, 8.0, 2.0, 1], [2, 9.0, 5.0, 1], [3, 5.0, 5.0, 0], [4, 0.0, 8.9, 1]]]
    )  # (x, y): on the corner, one column outside, invisible, clipped side (x=0 < 2)
    covered = covered_parts(activations, keypoints, 4, (S, S), half_size=3)
    assert covered[0, 0].tolist() == [True, False, False, False]
    near_edge = one_hot_map(1, 1)[None, None]  # region clipped to rows/cols [0, 4]
    keypoints_edge = torch.tensor([[[1, 0.0, 0.0, 1], [2, 4.0, 4.9, 1], [3, 5.0, 0.0, 1]]])
    assert covered_parts(near_edge, keypoints_edge, 3, (S, S), 3)[0, 0].tolist() == [
        True,
        True,
        False,
    ]  # 4.9 truncates to 4, as the reference's int()
    assert visible_parts(keypoints, 4).tolist() == [[True, True, False, True]]


def test_region_half_size_is_the_reference_scaled():
    assert region_half_size(224) == 36
    assert region_half_size(448) == 72
    assert region_half_size(128, half_size=10) == 10


def random_keypoints(n: int, parts: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.randint(0, S, (n, parts, 2), generator=generator).float()
    ids = torch.arange(1, parts + 1).float().expand(n, parts)
    return torch.stack([ids, xy[..., 0], xy[..., 1], torch.ones(n, parts)], dim=-1)


def test_a_prototype_always_on_one_part_is_consistent():
    g = torch.Generator().manual_seed(0)
    n, parts = 50, 5
    keypoints = random_keypoints(n, parts, g)
    keypoints[:, 1, 1:3] = torch.tensor([30.0, 30.0])  # part 2 ...
    keypoints[:, [0, 2, 3, 4], 1:3] = torch.randint(
        0, 15, (n, 4, 2), generator=g
    ).float()  # ... far from the rest
    maps = torch.stack([one_hot_map(int(k[1, 2]), int(k[1, 1])) for k in keypoints])[:, None]
    covered = covered_parts(maps, keypoints, parts, (S, S), half_size=4)
    labels = torch.zeros(n, dtype=torch.long)
    frequencies = part_frequencies(covered, visible_parts(keypoints, parts), labels, 1)
    assert frequencies[0, 0, 1] == 1.0 and frequencies[0, 0, [0, 2, 3, 4]].max() == 0.0
    assert consistency(covered, visible_parts(keypoints, parts), labels, 1).tolist() == [[True]]


def test_a_random_prototype_hits_parts_at_the_chance_rate_and_is_not_consistent():
    g = torch.Generator().manual_seed(1)
    n, parts, h = 2000, 3, 4
    keypoints = random_keypoints(n, parts, g)
    maps = torch.rand(n, 1, S, S, generator=g)  # peak anywhere
    covered = covered_parts(maps, keypoints, parts, (S, S), h)
    labels = torch.zeros(n, dtype=torch.long)
    frequency = part_frequencies(covered, visible_parts(keypoints, parts), labels, 1)[0, 0]
    # chance: the share of peak positions whose clipped box holds a uniformly placed keypoint
    coords = torch.arange(S)
    hits_1d = ((coords[:, None] - coords[None, :]).abs() <= h).float().mean()  # P(|peak - kp| <= h)
    chance = float(hits_1d**2)
    assert torch.allclose(frequency, torch.full_like(frequency, chance), atol=0.02)
    assert not consistency(covered, visible_parts(keypoints, parts), labels, 1).any()


def test_part_visible_nowhere_does_not_divide_by_zero():
    covered = torch.zeros(3, 1, 2, dtype=torch.bool)
    visible = torch.tensor([[True, False]] * 3)
    frequencies = part_frequencies(covered, visible, torch.zeros(3, dtype=torch.long), 1)
    assert frequencies.tolist() == [[[0.0, 0.0]]]


class ConvPrototypes:
    """A stand-in prototype network: k fixed random 3x3 filters over the image are its prototype maps."""

    prototypes_per_class = 2
    name = "conv prototypes"

    def __init__(self) -> None:
        self.filters = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0))

    def prototype_maps(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(images, self.filters, padding=1)


def test_stability_is_one_without_noise_and_drops_with_noise():
    g = torch.Generator().manual_seed(2)
    n = 24
    batches = [
        {
            "image": torch.randn(8, 3, S, S, generator=g),
            "label": torch.arange(8) % 2,
            "keypoints": random_keypoints(8, 4, g),
            "row": torch.arange(8) + 8 * i,
        }
        for i in range(n // 8)
    ]
    explainer = ConvPrototypes()

    def score(std: float) -> torch.Tensor:
        coverage = part_coverage(explainer, batches, 4, 6, std, 10 * std, 0, torch.device("cpu"))
        return stability(coverage.covered, coverage.covered_noisy, coverage.labels, 2)

    assert (score(0.0) == 1.0).all()
    assert score(1.0).mean() < 1.0  # noise as large as the signal moves peaks
