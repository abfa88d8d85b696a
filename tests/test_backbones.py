"""Every backbone adapter: non-negative features, logits = mean_j f_j . V^T + b, real weight loading."""

from pathlib import Path

import pytest
import torch
import torchvision

from proto_lightning.errors import ConfigValueError, IncompatibleWeightsError
from proto_lightning.models import BACKBONES, BlackBoxNet, build_backbone
from proto_lightning.models.adapters import split_classifier


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_logits_are_gap_then_linear_head(name: str):
    torch.manual_seed(0)
    net = BlackBoxNet(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feature_map = net.features(x)  # (B, D, H, W)
        logits = net(x)
    assert feature_map.shape[1] == net.backbone.out_channels and (feature_map >= 0).all()
    V, b = net.head.weight, net.head.bias  # (C, D), (C,)
    by_hand = (
        torch.einsum("bdhw,cd->bc", feature_map.double(), V.double())
        / (feature_map.shape[2] * feature_map.shape[3])
        + b.double()
    )
    # float32 sums of D terms: the error scales with the largest logit (1e3-1e4 at random init)
    assert (logits.double() - by_hand).abs().max() <= 1e-5 * by_hand.abs().max()


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_adapter_matches_torchvision_forward(name: str):
    """Independent reference: torchvision's own forward, with its classifier swapped for our head."""
    torch.manual_seed(0)
    net = BlackBoxNet(name, num_classes=5).eval()
    reference = torchvision.models.get_model(name, weights=None).eval()
    body = net.backbone.body
    if name.startswith("resnet"):  # our Sequential holds torchvision's children in order
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        state = {
            f"{names[int(k.split('.', 1)[0])]}.{k.split('.', 1)[1]}": v
            for k, v in body.state_dict().items()
        }
        missing, unexpected = reference.load_state_dict(state, strict=False)
        assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
        reference.fc = net.head
    else:  # DenseNet: features, then the ReLU torchvision applies in forward()
        reference.features.load_state_dict(body[0].state_dict())
        reference.classifier = net.head
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), atol=1e-5)


def test_local_weight_file_is_loaded(tmp_path: Path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("resnet18", str(path))
    assert torch.equal(backbone.body[0].weight, source.conv1.weight)
    assert torch.equal(backbone.body[7][1].conv2.weight, source.layer4[1].conv2.weight)


def test_small_cnn_weight_file_roundtrip(tmp_path: Path):
    source = build_backbone("small_cnn")
    path = tmp_path / "small.pt"
    torch.save(source.body.state_dict(), path)
    loaded = build_backbone("small_cnn", str(path))
    for a, b in zip(source.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b)


def test_weights_of_another_architecture_are_refused(tmp_path: Path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(IncompatibleWeightsError, match="another architecture"):
        build_backbone("resnet18", str(path))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(IncompatibleWeightsError, match="cannot read"):
        build_backbone("resnet18", str(truncated))


def test_unknown_backbone_lists_the_registry_and_the_closest_names():
    with pytest.raises(ConfigValueError, match="resnet50"):
        build_backbone("resnet5")
    with pytest.raises(ConfigValueError, match="Did you mean resnet18"):
        build_backbone("resnet81")


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnet_y_400mf", "mobilenet_v2"])
def test_any_torchvision_classifier_with_a_linear_head_is_a_backbone(name):
    """Beyond the registry, by name: the body of torchvision's classifier; with its weights and head
    the black box gives torchvision's own logits."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, num_classes=3).eval()
    net = BlackBoxNet(name, 3).eval()
    parts = split_classifier(reference)
    net.backbone.body.load_state_dict(parts.backbone.body.state_dict())
    net.head.load_state_dict(parts.head.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), atol=1e-5, rtol=1e-4)
