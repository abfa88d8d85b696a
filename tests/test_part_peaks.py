"""Peak-on-part assignment on hand-made heatmaps and keypoints."""

import pytest
import torch

from proto_lightning.metrics.part_peaks import (
    assign_parts,
    defining_parts_found,
    modal_part_share,
    on_part_share,
    peak_locations,
    prototype_peak_parts,
)


def test_peak_is_assigned_to_the_nearest_visible_part_within_radius():
    heat = torch.zeros(3, 10, 10)
    heat[0, 2, 7] = 1  # peak at x=7.5, y=2.5
    heat[1, 8, 1] = 1  # peak at x=1.5, y=8.5: far from every part
    heat[2, 2, 7] = 1  # same peak, but part 1 is invisible there
    peaks = peak_locations(heat)
    assert peaks[0].tolist() == [7.5, 2.5]
    kp = torch.tensor([[1, 7.0, 3.0, 1], [2, 2.0, 2.0, 1]]).float().expand(3, 2, 4).clone()
    kp[2, 0, 3] = 0
    parts = assign_parts(peaks, kp, radius=2.0)
    assert parts.tolist() == [1, -1, -1]  # image 2: part 2 is 5.5 px away, beyond the radius


def test_modal_share_counts_misses_in_the_denominator():
    assert modal_part_share(torch.tensor([3, 3, 1, -1])) == (3, 0.5)
    assert modal_part_share(torch.tensor([-1, -1])) == (-1, 0.0)


def test_a_part_exactly_at_the_radius_is_hit():
    peaks = torch.tensor([[7.5, 2.5]])
    kp = torch.tensor([[[1, 7.5, 5.5, 1], [2, 0.0, 0.0, 1]]])  # part 1 exactly 3 px below the peak
    assert assign_parts(peaks, kp, radius=3.0).tolist() == [1]
    assert assign_parts(peaks, kp, radius=2.9).tolist() == [-1]


def test_prototype_peaks_on_maps_upsampled_bilinearly_by_hand():
    """4 x 4 maps to 8 x 8 (radius: one cell, 2 px). A delta at cell (h 1, w 2) upsamples to 0.75 at
    output columns 4 and 5 (source 1.75 and 2.25) and rows 2 and 3: the first maximum is pixel
    (4, 2), centre (4.5, 2.5), 1.5 px from part 2 at (3, 2.5) (with align_corners=True the peak
    would be column 5, 2.5 px away). A delta at the last cell (3, 3) peaks
    at the last pixel (source 3.25 is clamped to cell 3), centre (7.5, 7.5): no part within 2 px.
    The second image hides part 2: its first prototype finds none."""
    maps = torch.zeros(2, 2, 4, 4)
    maps[:, 0, 1, 2] = 1
    maps[:, 1, 3, 3] = 1
    keypoints = torch.tensor([[1, 1.0, 1.0, 1], [2, 3.0, 2.5, 1]]).expand(2, 2, 4).clone()
    keypoints[1, 1, 3] = 0
    parts = prototype_peak_parts(maps, keypoints, (8, 8))
    assert parts.tolist() == [[2, -1], [-1, -1]]
    assert on_part_share(parts) == 0.25


def test_defining_parts_found_by_hand():
    """Class 0 (5 images): prototype 0 on the head (2) in 4 of 5 = 0.8, found; prototype 1 on the
    tail (5) in 3 of 5, not found. Class 1 (2 images): prototype 1 on the wing (4) in both, found;
    the head in 1 of 2, not. Class 2 (1 image): the head, found. Class 3 has no image and is left
    out. 3 of 9 (class, part) pairs; 4 of 9 at a threshold of 0.6 (class 0's tail)."""
    parts = torch.tensor(
        [[2, 5], [2, 5], [2, 5], [2, 1], [3, -1], [2, 4], [-1, 4], [2, 1]]
    )  # (8 images, k = 2)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    assert defining_parts_found(parts, labels, 4, [2, 4, 5]) == pytest.approx(3 / 9)
    assert defining_parts_found(parts, labels, 4, [2, 4, 5], threshold=0.6) == pytest.approx(4 / 9)
