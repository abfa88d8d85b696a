"""Explainers behind one interface, each against an independent closed form."""

import numpy as np
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
    """Class 0's logit is the brightest red of the left half; class 1's is constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, :, :16].amax(dim=(1, 2)) * 10
        return torch.stack([s, torch.full_like(s, 5.0)], dim=1)


def test_lime_weights_the_superpixels_the_model_reads():
    """A hidden superpixel takes its own mean colour (lime's hide_color=None): hiding the one with
    the brightest red lowers class 0's logit, so that superpixel carries the largest weight."""
    generator = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, :, :16] = torch.rand(32, 16, generator=generator)  # a textured red left half
    image[0, 2, :, 16:] = 1.0  # a flat blue right half
    explainer = LimeExplainer(
        LeftHalfModel(), variant="quick", quick_samples=200, segments=8, mean=(0,) * 3, std=(1,) * 3
    )
    heatmap = explainer.explain(image, torch.tensor([0]))[0]
    brightest = divmod(int(image[0, 0, :, :16].argmax()), 16)  # (row, column) of the max red
    assert heatmap[brightest] == heatmap.max() > 0  # its superpixel carries the most weight
    again = explainer.explain(image, torch.tensor([0]))[0]
    assert torch.equal(heatmap, again)  # seeded


def test_lime_equals_the_lime_package_run_by_hand_at_its_defaults():
    """The reference: `LimeImageExplainer().explain_instance` at its defaults (quickshift, 1000
    samples, mean-coloured hiding, probabilities), on the de-normalised image, one image per
    classifier call. Our batched, normalising wrapper gives the same weights to 1e-6."""
    from lime.lime_image import LimeImageExplainer

    torch.manual_seed(0)
    net = blackbox().eval()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    rgb = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1)).double()
    image = (rgb.permute(2, 0, 1).float() - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[
        :, None, None
    ]  # (3, 32, 32) normalised as the data is

    def probabilities(batch):  # one image at a time, the plainest classifier_fn
        out = []
        for picture in batch:
            x = (
                torch.from_numpy(picture).float().permute(2, 0, 1)
                - torch.tensor(mean)[:, None, None]
            )
            x = x / torch.tensor(std)[:, None, None]
            with torch.no_grad():
                out.append(net(x[None]).softmax(1)[0].double().numpy())
        return np.stack(out)

    target = 1
    reference = LimeImageExplainer(random_state=0).explain_instance(
        rgb.numpy(), probabilities, labels=(target,), top_labels=None, random_seed=0
    )
    expected = dict(reference.local_exp[target])
    ours = LimeExplainer(net, mean=mean, std=std, batch_size=37)
    segments, weights = ours.weights(image, target)
    assert np.array_equal(segments, reference.segments)
    assert weights.keys() == expected.keys()
    assert max(abs(weights[k] - expected[k]) for k in expected) < 1e-6
    heatmap = ours.explain(image[None], torch.tensor([target]))[0]
    painted = np.vectorize(expected.get)(reference.segments)
    assert np.allclose(heatmap.numpy(), painted, atol=1e-6)


def test_every_method_gives_one_heatmap_per_image_at_the_input_size():
    """The interface evaluation relies on: (B, 3, H, W) images -> (B, H, W) heatmaps, also when H != W."""
    net = blackbox()
    model = ProtoPNet({"name": "small_cnn"}, num_classes=3, prototypes_per_class=2, prototype_dim=8)
    images, targets = torch.randn(2, 3, 40, 24), torch.tensor([0, 2])
    for explainer in (
        GradCAMExplainer(net),
        LimeExplainer(net, variant="quick", quick_samples=10, segments=6),
        LimeExplainer(net, samples=10),
        ProtoPNetExplainer(model),
    ):
        heatmaps = explainer.explain(images, targets)
        assert heatmaps.shape == (2, 40, 24) and torch.isfinite(heatmaps).all(), explainer.name
