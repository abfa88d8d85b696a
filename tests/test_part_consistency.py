"""Consistency and stability (Huang et al. 2023, EvalProtoPNet) on hand-made cases with known answers."""

import cv2
import numpy as np
import pytest
import torch
from scipy.stats import norm

from proto_lightning.config import compose_config
from proto_lightning.data.transforms import reference_keypoints
from proto_lightning.evaluation.scores import part_coverage
from proto_lightning.metrics.part_consistency import (
    consistency,
    covered_parts,
    part_frequencies,
    peak_pixels,
    perturb,
    reference_peak_pixels,
    region_half_size,
    stability,
    visible_parts,
)
from tests.test_boxes import keys_bicubic

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


def test_consistency_threshold_is_the_reference_and_inclusive():
    """A part covered on 8 of 10 images reaches the reference's 0.8 exactly (>=, consistent); on 7 of
    10 it does not; a lower threshold (0.5) would call both consistent."""
    labels = torch.zeros(10, dtype=torch.long)
    visible = torch.ones(10, 1, dtype=torch.bool)
    covered = torch.zeros(10, 2, 1, dtype=torch.bool)  # prototype 0 on 8 images, prototype 1 on 7
    covered[:8, 0, 0] = True
    covered[:7, 1, 0] = True
    assert consistency(covered, visible, labels, 1).tolist() == [[True, False]]
    configured = compose_config("evaluate", ["data.root=unused"]).evaluation.parts
    assert configured.threshold == 0.8  # EvalProtoPNet's
    assert consistency(covered, visible, labels, 1, configured.threshold).tolist() == [
        [True, False]
    ]


def test_noise_is_the_reference_clipped_gaussian():
    """std 0.2 clipped to +-0.25 (EvalProtoPNet): P(|0.2 z| > 0.25) = 2 (1 - Phi(1.25)) = 0.2113 of the
    values sit exactly on the clip, and the second moment is that of the clipped normal."""
    configured = compose_config("evaluate", ["data.root=unused"]).evaluation.parts
    std, eps = configured.noise_std, configured.noise_clip
    assert (std, eps) == (0.2, 0.25)
    images = torch.full((2, 3, 64, 64), 0.5)
    noise = perturb(images, std, eps, seeds=[0, 1]) - images
    c = eps / std
    on_clip = 2 * norm.sf(c)
    # E[min(z^2, c^2)] = P(|z| < c) - 2 c phi(c) + c^2 P(|z| > c)
    second_moment = std**2 * ((1 - on_clip) - 2 * c * norm.pdf(c) + c**2 * on_clip)
    assert noise.abs().max().item() == pytest.approx(eps)
    assert (noise.abs() > eps - 1e-6).float().mean().item() == pytest.approx(on_clip, abs=0.01)
    assert (noise**2).mean().item() == pytest.approx(second_moment, rel=0.03)


def test_noise_clipped_to_zero_leaves_every_prototype_stable():
    """Whatever the Gaussian's spread, a clip of 0 adds nothing: stability is exactly 1."""
    g = torch.Generator().manual_seed(4)
    batch = {
        "image": torch.randn(6, 3, S, S, generator=g),
        "label": torch.arange(6) % 2,
        "keypoints": random_keypoints(6, 4, g),
        "row": torch.arange(6),
    }
    coverage = part_coverage(ConvPrototypes(), [batch], 4, 6, 50.0, 0.0, 0, torch.device("cpu"))
    assert torch.equal(coverage.covered, coverage.covered_noisy)


def test_region_follows_an_asymmetric_peak_on_an_upsampled_map():
    """Peak at (y=2, x=11) on a full-size map: the region is rows [0, 5], columns [8, 14] (half-size 3);
    keypoints at x = 7.9 (truncated to 7, outside) and x = 14.9 (14, inside) on row 4."""
    activations = one_hot_map(2, 11)[None, None]
    keypoints = torch.tensor(
        [[[1, 7.9, 4.0, 1], [2, 14.9, 4.0, 1], [3, 11.0, 5.9, 1], [4, 11, 6, 1]]]
    )
    assert covered_parts(activations, keypoints, 4, (S, S), 3)[0, 0].tolist() == [
        False,
        True,
        True,
        False,
    ]
    # on a 7x7 map upsampled to 40 px, the peak is the bicubic (OpenCV INTER_CUBIC) upsampling's argmax
    rng = np.random.default_rng(1)
    for _ in range(5):
        small = rng.random((7, 7))
        up = keys_bicubic(small, S)
        y, x = np.unravel_index(np.argmax(up), up.shape)
        peak = peak_pixels(torch.from_numpy(small)[None, None], (S, S))[0, 0]
        assert peak.tolist() == [y, x]


def test_half_size_at_the_demo_input_is_the_reference_scaled():
    assert region_half_size(128) == 21  # 36 x 128 / 224 = 20.57


def test_a_part_shown_once_counts_in_full():
    covered = torch.tensor([[[True, False]], [[False, False]]])
    visible = torch.tensor([[True, False], [False, True]])
    frequencies = part_frequencies(covered, visible, torch.zeros(2, dtype=torch.long), 1)
    assert frequencies.tolist() == [[[1.0, 0.0]]]


def test_stability_by_hand():
    """3 images of class 0, 1 of class 1; 2 prototypes, 3 parts. Prototype 0 keeps its covered parts
    on images 0 and 2, prototype 1 on images 0, 1 and 3."""
    covered = torch.zeros(4, 2, 3, dtype=torch.bool)
    noisy = covered.clone()
    noisy[1, 0, 2] = True  # image 1, prototype 0 gains part 2
    noisy[2, 1, 0] = True  # image 2, prototype 1 gains part 0
    noisy[3, 1, 1] = True  # image 3 (class 1), prototype 1 gains part 1
    labels = torch.tensor([0, 0, 0, 1])
    assert torch.allclose(
        stability(covered, noisy, labels, 2), torch.tensor([[2 / 3, 2 / 3], [1.0, 0.0]])
    )


def test_reference_keypoints_follow_evalprotopnets_integer_arithmetic():
    """util/local_parts.py truncates the text values (box "10.7 20.2 112.9 50.0" -> x1 = 10, y1 = 20,
    x2 = 10 + 112, y2 = 20 + 50; keypoint "71.4" -> 71); eval_interpretability.py places a keypoint
    at int(S * ((x - x1) / (x2 - x1))), int truncating toward zero, and keeps every visible one,
    inside the crop or not."""
    box = [10.7, 20.2, 112.9, 50.0]
    raw = np.array(
        [
            [71.4, 44.9, 1],  # int(224 * (61 / 112)) = int(121.99999999999999) = 121, not 122;
            #                   int(224 * (24 / 50)) = int(107.52) = 107
            [5.0, 30.0, 1],  # left of the crop: int(224 * (-5 / 112)) = -10, still visible; y 44
            [9.9, 20.0, 1],  # 9 -> int(224 * (-1 / 112)) = -2; y: 0
            [50.0, 60.0, 0],  # int(224 * (40 / 112)) = 80, int(224 * (40 / 50)) = 179; invisible
        ]
    )
    placed = reference_keypoints(raw, box, (0, 0), 224)
    assert placed.tolist() == [[121, 107, 1], [-10, 44, 1], [-2, 0, 1], [80, 179, 0]]
    # no box: the whole 100 x 300 image; int(224 * (-1 / 300)) = int(-0.75) = 0 (floor would say -1)
    whole = reference_keypoints(np.array([[-1.0, 99.9, 1], [10.0, 0.5, 1]]), None, (100, 300), 224)
    assert whole.tolist() == [
        [0, 221, 1],
        [7, 0, 1],
    ]  # int(224 * (99 / 100)), int(224 * (10 / 300))


def reference_first_peak(
    activation: np.ndarray, size: int, width: int | None = None
) -> tuple[int, int]:
    """EvalProtoPNet, written out: cv2.resize(INTER_CUBIC) to size x size (or size x width), then
    the first of np.where(a == a.max())."""
    dsize = (width or size, size)  # OpenCV takes (width, height)
    up = cv2.resize(activation, dsize=dsize, interpolation=cv2.INTER_CUBIC)
    ys, xs = np.where(up == up.max())
    return int(ys[0]), int(xs[0])


def test_reference_peaks_are_opencvs_first_maximum_even_on_ties():
    """On a constant or mirror-symmetric map every location ties up to the last float bit, and
    OpenCV's bits decide (torch's bicubic picks another pixel on the constant map)."""
    mirrored = np.tile([0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0], (7, 1))  # symmetric about column 3
    random = np.random.default_rng(3).random((7, 7))
    maps = np.stack([np.full((7, 7), 0.3), mirrored, random]).astype(np.float32)  # k = 3 maps
    peaks = reference_peak_pixels(torch.from_numpy(maps)[None], (224, 224))[0]  # one image, k = 3
    assert [tuple(p) for p in peaks.tolist()] == [reference_first_peak(m, 224) for m in maps]
    assert peak_pixels(torch.from_numpy(maps[:1])[None], (224, 224))[0, 0].tolist() != list(
        reference_first_peak(maps[0], 224)
    )


def test_reference_half_size_is_36_pixels_at_any_input():
    assert [region_half_size(s, protocol="reference") for s in (128, 224, 448)] == [36, 36, 36]
    assert region_half_size(128, protocol="scaled") == 21


def test_the_protocol_decides_which_peak_a_tie_gives():
    """A constant 7x7 map upsampled to 224: OpenCV's first maximum is (0, 17), torch's (17, 4); with
    half-size 36 the keypoint (x 50, y 10) is covered only by the reference's region, (x 5, y 45)
    only by ours."""
    constant = torch.full((1, 1, 7, 7), 0.3)
    keypoints = torch.tensor([[[1, 50.0, 10.0, 1], [2, 5.0, 45.0, 1]]])
    reference = covered_parts(constant, keypoints, 2, (224, 224), 36, protocol="reference")
    scaled = covered_parts(constant, keypoints, 2, (224, 224), 36, protocol="scaled")
    assert reference[0, 0].tolist() == [True, False] and scaled[0, 0].tolist() == [False, True]
    # a wide input: OpenCV takes (width, height)
    wide = torch.rand(1, 1, 5, 9, generator=torch.Generator().manual_seed(0))
    peak = reference_peak_pixels(wide, (50, 90))[0, 0]
    assert tuple(peak.tolist()) == reference_first_peak(wide[0, 0].numpy(), 50, width=90)


def test_region_is_clipped_to_a_wide_images_own_height_and_width():
    """A 20 x 40 input, peak at (y 18, x 38), half-size 3: rows [15, 20], columns [35, 40]."""
    activations = torch.zeros(1, 1, 20, 40)
    activations[0, 0, 18, 38] = 1.0
    keypoints = torch.tensor([[[1, 39.0, 19.0, 1], [2, 39.0, 21.0, 1], [3, 34.0, 18.0, 1]]])
    covered = covered_parts(activations, keypoints, 3, (20, 40), 3)
    assert covered[0, 0].tolist() == [True, False, False]


def reference_peaks_by_hand(maps: np.ndarray, size: int) -> list[tuple[int, int]]:
    """EvalProtoPNet's peak, per map: cv2.resize(map, (S, S), INTER_CUBIC), then the first hit of
    np.where(up == up.max())."""
    peaks = []
    for activation in maps:
        up = cv2.resize(activation, (size, size), interpolation=cv2.INTER_CUBIC)
        ys, xs = np.where(up == up.max())
        peaks.append((int(ys[0]), int(xs[0])))
    return peaks


def test_reference_peaks_resize_each_map_alone_on_ties():
    """Mirror-symmetric and constant maps (ties everywhere): each map resized on its own, as the
    reference does; a multi-channel resize rounds differently and moves peaks."""
    generator = np.random.RandomState(0)
    half = generator.rand(5, 7, 4).astype(np.float32)
    mirrored = np.concatenate([half, half[:, :, ::-1]], axis=2)  # (5, 7, 8) symmetric in x
    maps = np.concatenate([mirrored, np.full((5, 7, 8), 0.3, np.float32)])  # + constant maps
    activations = torch.from_numpy(maps).view(2, 5, 7, 8)  # k = 5 maps an image
    found = reference_peak_pixels(activations, (96, 96)).reshape(-1, 2).tolist()
    assert [tuple(p) for p in found] == reference_peaks_by_hand(maps, 96)


def test_the_protocol_is_chosen_for_the_input_size_and_named_in_the_keys():
    from proto_lightning.errors import ConfigValueError
    from proto_lightning.evaluation.table import ResultRow
    from proto_lightning.metrics.bootstrap import Estimate
    from proto_lightning.metrics.part_consistency import part_protocol
    from proto_lightning.stages.evaluate import headline_metrics

    assert part_protocol("auto", 224) == "reference" and part_protocol("auto", 96) == "scaled"
    assert part_protocol("reference", 224) == "reference"  # chosen on purpose where it fits
    assert part_protocol("scaled", 96) == "scaled" and part_protocol("scaled", 224) == "scaled"
    with pytest.raises(ConfigValueError, match="protocol=reference keeps EvalProtoPNet's 36 px"):
        part_protocol("reference", 96)
    row = [ResultRow("Post-hoc PPN", {"consistency": Estimate(0.6, 0.5, 0.7)})]
    scaled, reference = headline_metrics(row, "scaled"), headline_metrics(row, "reference")
    assert list(scaled) == ["Post-hoc PPN/consistency@scaled"]
    assert list(reference) == ["Post-hoc PPN/consistency"]
