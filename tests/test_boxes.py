"""Receptive-field and high-activation boxes against ProtoPNet's arithmetic worked by hand."""

import numpy as np
import pytest
import torch
from torch import nn

from proto_lightning.prototypes.boxes import (
    high_activation_box,
    projected_boxes,
    receptive_field_boxes,
)
from proto_lightning.prototypes.projection import Projection


def official_rf_box(h: int, w: int, image_size: int, j: float, r: float, start: float) -> list[int]:
    """cfchen-duke/ProtoPNet receptive_field.py, compute_rf_protoL_at_spatial_location: a location's
    centre is start + index * j, its box int(centre -+ r / 2), clipped to the image."""
    y, x = start + h * j, start + w * j
    return [
        max(int(y - r / 2), 0),
        min(int(y + r / 2), image_size),
        max(int(x - r / 2), 0),
        min(int(x + r / 2), image_size),
    ]


@pytest.mark.parametrize(
    "layers, rf_info",
    [
        # conv 3x3 s1 p1 -> (j, r, start) = (1, 3, 0.5); avg-pool 2 s2 -> (2, 4, 1.0)
        (lambda: [nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(2)], (2, 4, 1.0)),
        # + conv 3x3 s1 p1 on the pooled map -> r = 4 + 2 x 2 = 8, start = 1.0
        (
            lambda: [nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, padding=1)],
            (2, 8, 1.0),
        ),
    ],
)
def test_measured_receptive_fields_equal_the_official_layer_arithmetic(layers, rf_info):
    torch.manual_seed(0)
    net = nn.Sequential(*layers())  # linear layers only: the gradient support is the whole field
    size = 16
    locations = np.array([(h, w) for h in range(8) for w in range(8)])
    measured = receptive_field_boxes(net, size, locations)
    expected = np.array([official_rf_box(h, w, size, *rf_info) for h, w in locations])
    assert measured.tolist() == expected.tolist()


def test_receptive_fields_are_measured_where_biases_switch_every_relu_off():
    """A trained network's biases can turn every unit at a location off for unit-scale noise (the
    demo's ProtoPNet at 96 px had two such locations): the large-scale probes still see the field,
    which equals the layer arithmetic; with unit-scale probes only, the error says why."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    nn.init.constant_(conv.bias, -50.0)  # weights ~U(-0.19, 0.19): off for any unit-scale input
    net = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2))
    size = 16
    locations = np.array([(h, w) for h in range(8) for w in range(8)])
    measured = receptive_field_boxes(net, size, locations)
    expected = np.array([official_rf_box(h, w, size, 2, 4, 1.0) for h, w in locations])
    assert measured.tolist() == expected.tolist()
    with pytest.raises(ValueError, match=r"location \(0, 0\) depends on no input pixel"):
        receptive_field_boxes(net, size, locations, scales=(1.0,))


def test_high_activation_box_keeps_the_top_five_percent():
    """At the input size the map is not resampled. Values 0..99 row by row: the 95th percentile
    (linear, as np.percentile) is 94.05, so pixels 95..99 remain: row 9, columns 5..9."""
    activation = torch.arange(100.0).view(10, 10)
    assert np.percentile(activation.numpy(), 95) == pytest.approx(94.05)
    assert high_activation_box(activation, 10).tolist() == [9, 10, 5, 10]
    assert high_activation_box(activation, 10, percentile=90).tolist() == [9, 10, 0, 10]
    assert high_activation_box(activation, 10, percentile=50).tolist() == [5, 10, 0, 10]


def test_high_activation_box_keeps_pixels_at_the_threshold():
    """A flat block holding 6 of 25 pixels is the top 5 %: the threshold equals its value and the
    official mask (activation >= threshold) keeps all of it."""
    activation = torch.zeros(5, 5)
    activation[1:3, 2:5] = 1.0
    assert high_activation_box(activation, 5).tolist() == [1, 3, 2, 5]


def test_high_activation_box_is_found_after_bicubic_upsampling():
    """A one-cell peak of a 4x4 map upsampled to 32: the box is centred on the cell's 8x8 block."""
    activation = torch.zeros(4, 4)
    activation[1, 2] = 1.0
    y0, y1, x0, x1 = high_activation_box(activation, 32).tolist()
    assert (y0 + y1) / 2 == pytest.approx(12, abs=1) and (x0 + x1) / 2 == pytest.approx(20, abs=1)
    assert 0 < y1 - y0 <= 8 and 0 < x1 - x0 <= 8


def keys_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize as OpenCV's INTER_CUBIC (ProtoPNet's upsampling): Keys' kernel with a = -0.75,
    half-pixel centres, edge pixels repeated; written out as two (size, n) weight matrices."""

    def weights(n: int) -> np.ndarray:
        W = np.zeros((size, n))
        for i in range(size):
            x = (i + 0.5) * n / size - 0.5
            for tap in range(int(np.floor(x)) - 1, int(np.floor(x)) + 3):
                t, a = abs(x - tap), -0.75
                w = (
                    (a + 2) * t**3 - (a + 3) * t**2 + 1
                    if t <= 1
                    else (a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0)
                )
                W[i, min(max(tap, 0), n - 1)] += w
        return W

    return weights(image.shape[0]) @ image @ weights(image.shape[1]).T


def test_high_activation_box_is_the_official_crop_of_the_bicubic_upsampling():
    """find_high_activation_crop: the box of pixels >= the 95th percentile of the upsampled map."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        activation = rng.random((5, 5))
        up = keys_bicubic(activation, 40)
        ys, xs = np.nonzero(up >= np.percentile(up, 95))
        expected = [ys.min(), ys.max() + 1, xs.min(), xs.max() + 1]
        assert high_activation_box(torch.from_numpy(activation), 40).tolist() == expected


def test_projected_boxes_are_each_prototypes_own_on_its_own_push_image():
    """Three prototypes projected onto push rows 7, 3, 7: each gets the receptive field of its
    location and the high-activation box of its own map on its own image."""

    class PushSet:
        def by_row(self, row: int) -> dict:
            return {"image": torch.full((3, 8, 8), float(row))}

    maps = {  # (row, query) -> top-left corner of the 2 x 2 bright block of its 8 x 8 map
        (7, 0): (1, 1),
        (3, 1): (5, 2),
        (7, 2): (4, 6),
    }

    def activation_maps(images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(images), 3, 8, 8)  # (B, Q, H, W); other queries' maps stay dark
        for b, image in enumerate(images):
            row = int(image[0, 0, 0])
            for (r, q), (y, x) in maps.items():
                if r == row:
                    out[b, q, y : y + 2, x : x + 2] = 1.0
        return out

    projection = Projection.empty(3)
    projection.rows[:] = [7, 3, 7]
    projection.locations[:] = [[0, 0], [3, 1], [2, 2]]
    boxes = projected_boxes(
        nn.Conv2d(3, 2, 3, padding=1), activation_maps, projection, PushSet(), 8, 95.0, "cpu"
    )
    assert boxes["rf_boxes"].tolist() == [[0, 2, 0, 2], [2, 5, 0, 3], [1, 4, 1, 4]]
    # 4 of 64 pixels are the top 5 %: each box is its own block
    assert boxes["high_activation_boxes"].tolist() == [[1, 3, 1, 3], [5, 7, 2, 4], [4, 6, 6, 8]]
    # a DDP rank's share: queries 1 and 2 only, one image per pass, the same boxes in that order
    share = projected_boxes(
        nn.Conv2d(3, 2, 3, padding=1),
        activation_maps,
        projection,
        PushSet(),
        8,
        95.0,
        "cpu",
        queries=np.array([1, 2]),
        images_per_pass=1,
    )
    for name, found in share.items():
        assert found.tolist() == boxes[name][1:].tolist()
