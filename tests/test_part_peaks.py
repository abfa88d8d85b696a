"""Peak-on-part assignment on hand-made heatmaps and keypoints."""

import torch

from proto_lightning.metrics.part_peaks import assign_parts, modal_part_share, peak_locations


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
