"""Explainers behind one interface, each against an independent closed form."""

import torch
import torch.nn.functional as F

from proto_lightning.explainers import (
    GradCAMExplainer,
    LimeExplainer,
    PostHocExplainer,
    ProtoPNetExplainer,
)
from proto_lightning.models import BlackBoxNet, ProtoPNet
from proto_lightning.models.posthoc import PostHocPrototypeNetwork


def blackbox(classes: int = 3) -> BlackBoxNet:
    torch.manual_seed(0)
    return BlackBoxNet("small_cnn", classes).eval()


def cam(net: BlackBoxNet, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class activation map f(h, w) . v_c, by hand."""
    f = net.features(images)  # (B, D, h, w)
    return torch.einsum("bdhw,bd->bhw", f, net.head.weight[targets])


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[
        :, 0
    ]


def test_gradcam_of_a_gap_linear_head_is_the_relu_of_the_cam():
    # GAP + linear head: d y_c / d f_d(h, w) = v_cd / (h w), so Grad-CAM = ReLU(CAM) / (h w)
    net = blackbox()
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with torch.no_grad():
        expected = cam(net, images, targets)
        expected = upsample(expected.clamp(min=0) / expected[0].numel(), 32)
    heatmaps = GradCAMExplainer(net).explain(images, targets)
    assert heatmaps.shape == (2, 32, 32)
    assert torch.allclose(heatmaps, expected, atol=1e-5)


def test_posthoc_class_heatmap_is_the_cam():
    net = blackbox()
    V = net.head.weight.detach()  # (C, D)
    noise = torch.randn(3, 2, V.shape[1])
    prototypes = torch.cat([noise, (V - noise.sum(1))[:, None]], dim=1)  # (C, 3, D) summing to V
    model = PostHocPrototypeNetwork(net, prototypes, net.head.bias.detach(), None, {})
    explainer = PostHocExplainer(model)
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 0])
    with torch.no_grad():
        expected = upsample(cam(net, images, targets), 32)
        assert torch.allclose(explainer.classifier(images), net(images), atol=1e-5)
    assert torch.allclose(explainer.explain(images, targets), expected, atol=1e-4)
    assert explainer.prototype_maps(images, targets).shape[:2] == (2, 3)


def test_protopnet_heatmap_is_the_weighted_similarity_of_every_patch():
    torch.manual_seed(0)
    model = ProtoPNet({"name": "small_cnn"}, num_classes=3, prototypes_per_class=2, prototype_dim=8)
    explainer = ProtoPNetExplainer(model)
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([2, 1])
    with torch.no_grad():
        z = model.net.conv_features(images)  # (B, d, h, w)
        B, d, h, w = z.shape
        patches = z.permute(0, 2, 3, 1).reshape(B, h * w, d)
        protos = model.net.prototype_vectors.view(-1, d)  # (m, d)
        dist = torch.cdist(patches, protos) ** 2  # (B, hw, m)
        sim = torch.log((dist + 1) / (dist + 1e-4))
        weights = model.net.last_layer.weight[targets]  # (B, m)
        expected = upsample((sim * weights[:, None, :]).sum(-1).view(B, h, w), 32)
        own = sim.view(B, h, w, -1).permute(0, 3, 1, 2)[
            torch.arange(B)[:, None], targets[:, None] * 2 + torch.arange(2)
        ]
    assert torch.allclose(explainer.explain(images, targets), expected, atol=1e-3)
    assert torch.allclose(explainer.prototype_maps(images, targets), own, atol=1e-3)


class LeftHalfModel(torch.nn.Module):
    """Class 0's logit is the mean of the left half's red channel; class 1's is constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, :, :16].mean(dim=(1, 2)) * 10
        return torch.stack([s, torch.full_like(s, 5.0)], dim=1)


def test_lime_weights_the_superpixels_the_model_reads():
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, :, :16] = 1.0  # a red left half, a dark right half: SLIC splits them
    image[0, 2, :, 16:] = 1.0
    explainer = LimeExplainer(LeftHalfModel(), samples=200, segments=8)
    heatmap = explainer.explain(image, torch.tensor([0]))[0]
    assert heatmap[:, :16].mean() > 0.5 and heatmap[:, 16:].abs().max() < 0.2 * heatmap.max()
    again = explainer.explain(image, torch.tensor([0]))[0]
    assert torch.equal(heatmap, again)  # seeded


def test_every_method_gives_one_heatmap_per_image_at_the_input_size():
    """The interface evaluation relies on: (B, 3, H, W) images -> (B, H, W) heatmaps, also when H != W."""
    net = blackbox()
    model = ProtoPNet({"name": "small_cnn"}, num_classes=3, prototypes_per_class=2, prototype_dim=8)
    images, targets = torch.randn(2, 3, 40, 24), torch.tensor([0, 2])
    for explainer in (
        GradCAMExplainer(net),
        LimeExplainer(net, samples=10, segments=6),
        ProtoPNetExplainer(model),
    ):
        heatmaps = explainer.explain(images, targets)
        assert heatmaps.shape == (2, 40, 24) and torch.isfinite(heatmaps).all(), explainer.name
