"""Any black box a user has: timm CNNs and average-pooled ViTs, signed features, their own state dict.

The reference for every logit is timm's (or torchvision's) own forward pass of the user's model,
never our adapter's.
"""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from proto_lightning.errors import ConfigValueError, IncompatibleWeightsError
from proto_lightning.models import BlackBoxNet
from proto_lightning.models.blackbox import BlackBoxClassifier
from proto_lightning.models.imported import import_classifier, save_as_checkpoint
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.models.timm_backbones import NotDecomposableError
from proto_lightning.prototypes.decomposition import (
    NMFSettings,
    RefinementSettings,
    decompose_head,
)
from proto_lightning.prototypes.features import FeatureStore
from proto_lightning.stages.common import build
from proto_lightning.stages.decompose import run_decompose
from tests.helpers import stage_cfg

# (name, timm.create_model keyword arguments, input size, whether its features are signed)
TIMM_MODELS = {
    "cnn-relu": ("resnet10t", {}, 64, False),
    "cnn-layernorm": ("convnext_atto", {}, 64, True),
    "vit-avg": (
        "vit_tiny_patch16_224",
        {"global_pool": "avg", "img_size": 32, "depth": 2},
        32,
        True,
    ),
}
C = 4


def user_model(name: str, kwargs: dict, seed: int = 0) -> torch.nn.Module:
    """A 'trained elsewhere' classifier: random weights, a random (non-zero) head, eval mode."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=C, **kwargs).eval()
    with torch.no_grad():
        for p in model.get_classifier().parameters():
            p.normal_(0, 0.5)
    return model


def store_of(net: BlackBoxNet, images: torch.Tensor, labels: torch.Tensor) -> FeatureStore:
    """The feature store of `images` (sorted by label), built by hand from the net's maps."""
    with torch.no_grad():
        maps = net.features(images)  # (N, D, H, W)
    N, D, H, W = maps.shape
    order = torch.argsort(labels, stable=True)
    maps, labels = maps[order], labels[order]
    features = maps.permute(0, 2, 3, 1).reshape(-1, D).numpy()
    counts = np.bincount(labels.numpy(), minlength=C) * H * W
    hw = np.stack(np.divmod(np.arange(H * W), W), 1)
    return FeatureStore(
        features=features,
        rows=np.repeat(np.arange(N), H * W),
        image_ids=np.repeat(np.arange(N) + 1, H * W),
        locations=np.tile(hw, (N, 1)),
        labels=np.repeat(labels.numpy(), H * W),
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        map_size=(H, W),
    )


@pytest.mark.parametrize("kind", TIMM_MODELS)
def test_timm_black_boxes_decompose_exactly_with_timms_own_logits(kind, tmp_path):
    name, kwargs, size, signed = TIMM_MODELS[kind]
    model = user_model(name, kwargs)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    net = import_classifier(name, tmp_path / "mine.pt", C, kwargs).net.eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(12, 3, size, size, generator=generator)
    labels = torch.arange(12) % C
    store = store_of(net, images, labels)
    assert bool((store.features < 0).any()) == signed

    V, b = net.head.weight.detach(), net.head.bias.detach()
    result = decompose_head(
        store, V, 3, NMFSettings(max_iter=30), RefinementSettings(objective="paper", max_iter=100)
    )
    assert result.relative_head_error(V) < 1e-6
    # semi-NMF (signed bases) was chosen for signed features, NMF (bases >= 0) otherwise
    assert bool((result.bases < 0).any()) == signed

    posthoc = PostHocPrototypeNetwork(net, result.prototypes, b).eval()
    test_images = torch.randn(16, 3, size, size, generator=generator)
    with torch.no_grad():
        ours, theirs = posthoc(test_images), model(test_images)
    assert (ours - theirs).abs().max() < 1e-4
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


@pytest.mark.parametrize(
    ("pool", "reason"),
    [("token", "class token"), ("map", "attention"), ("max", "max-pools")],
)
def test_vits_whose_head_is_not_a_mean_of_patch_tokens_are_refused_with_the_reason(pool, reason):
    kwargs = {"global_pool": pool, "img_size": 32, "depth": 1}
    with pytest.raises(NotDecomposableError, match=reason):
        BlackBoxNet("vit_tiny_patch16_224", C, library="timm", kwargs=kwargs)


def test_a_cnn_head_that_is_not_a_spatial_mean_is_refused_by_the_probe():
    # max pooling passes every structural check; only the probe (mean of the map vs timm's
    # pre-logits) sees that the classifier does not read a mean
    with pytest.raises(NotDecomposableError, match="not what its classifier reads"):
        BlackBoxNet("resnet10t", C, library="timm", kwargs={"global_pool": "max"})


def test_an_unknown_timm_name_is_a_clear_config_error():
    with pytest.raises(ConfigValueError, match="unknown timm model 'convnext_atom'"):
        BlackBoxNet("convnext_atom", C, library="timm")


def test_a_timm_backbone_trains_as_the_black_box_body(tmp_path):
    """`model/backbone=timm`: the blackbox stage's model answers features(x) -> (B, D, H, W)."""
    spec = {"library": "timm", "name": "convnext_atto", "weights": None, "kwargs": {}}
    model = BlackBoxClassifier(spec, C, {"name": "adamw", "lr": 1e-3})
    x = torch.randn(2, 3, 64, 64)
    assert model.net.features(x).shape == (2, 320, 2, 2)
    assert model(x).shape == (2, C)
    assert not any(k.startswith("backbone.body.model.head.fc") for k in model.net.state_dict())
    # saved and reloaded as a checkpoint, read as data, it rebuilds the same timm body
    save_as_checkpoint(model, tmp_path / "bb.ckpt", "trained here")
    again = BlackBoxClassifier.load_checkpoint(tmp_path / "bb.ckpt").eval()
    assert torch.equal(again(x), model.eval()(x))


def test_the_timm_config_group_builds_the_named_model_with_its_kwargs():
    from proto_lightning.config import compose_config

    cfg = compose_config(
        "blackbox",
        [
            "data.root=unused",
            "model/backbone=timm",
            "model.backbone.name=vit_tiny_patch16_224",
            "model.backbone.kwargs={global_pool: avg, img_size: 32, depth: 1}",
            "model.num_classes=3",
        ],
    )
    model = build(cfg.model, _convert_="all")
    assert model.net.features(torch.randn(1, 3, 32, 32)).shape == (1, 192, 2, 2)
    assert model.hparams.backbone["kwargs"] == {"global_pool": "avg", "img_size": 32, "depth": 1}


def test_timm_body_weights_load_from_a_local_file_without_its_classifier(tmp_path):
    from proto_lightning.models import build_backbone

    trained = user_model("resnet10t", {})  # 4-class head: left out, the body fits any class count
    torch.save(trained.state_dict(), tmp_path / "body.pt")
    backbone = build_backbone("resnet10t", str(tmp_path / "body.pt"), "timm").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone.features(x), trained.forward_features(x), atol=1e-6)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(IncompatibleWeightsError, match="missing"):
        build_backbone("resnet10t", str(tmp_path / "other.pt"), "timm")


@pytest.mark.parametrize(
    ("weights", "asked"), [("pretrained", "resnet10t"), ("gluon_in1k", "resnet10t.gluon_in1k")]
)
def test_a_pretrained_tag_asks_timm_for_those_weights(monkeypatch, weights, asked):
    """Nothing downloads in tests: timm's factory is replaced by a spy that builds random weights."""
    from proto_lightning.models.timm_backbones import create_timm_model

    calls, real = [], timm.create_model

    def spy(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return real(name.split(".")[0], pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    create_timm_model("resnet10t", 0, weights)
    assert calls == [(asked, True)]


def test_a_torchvision_state_dict_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=C).eval()
    save_file(model.state_dict(), tmp_path / "mine.safetensors")  # the safe format, also read
    imported = import_classifier("resnet18", tmp_path / "mine.safetensors", C)
    checkpoint = save_as_checkpoint(imported, tmp_path / "bb.ckpt", tmp_path / "mine.safetensors")
    again = BlackBoxClassifier.load_checkpoint(checkpoint).eval()  # weights_only read
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert (again(x) - model(x)).abs().max() < 1e-5
    assert torch.equal(again.net.head.weight, model.fc.weight)


def test_a_ddp_saved_state_dict_loads_without_its_module_prefix(tmp_path):
    model = torchvision.models.resnet18(num_classes=C).eval()
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt"
    )
    imported = import_classifier("resnet18", tmp_path / "w.pt", C)
    assert torch.equal(imported.net.head.bias, model.fc.bias)


def test_a_file_that_does_not_fit_is_refused_naming_the_keys(tmp_path):
    torchvision_model = torchvision.models.resnet18(num_classes=C)
    torch.save(torchvision_model.state_dict(), tmp_path / "r18.pt")
    with pytest.raises(IncompatibleWeightsError, match=r"fc\.weight.*predicts 4 classes.*has 7"):
        import_classifier("resnet18", tmp_path / "r18.pt", 7)
    with pytest.raises(IncompatibleWeightsError, match=r"missing \(e\.g\. \['layer1\.2\."):
        import_classifier("resnet34", tmp_path / "r18.pt", C)
    timm_model = user_model("resnet10t", {})
    torch.save(timm_model.state_dict(), tmp_path / "r10.pt")
    with pytest.raises(IncompatibleWeightsError, match=r"unexpected"):
        import_classifier("convnext_atto", tmp_path / "r10.pt", C)
    with pytest.raises(IncompatibleWeightsError, match="MLP"):
        import_classifier("vgg16", tmp_path / "r18.pt", C)
    with pytest.raises(ConfigValueError, match="unknown classifier"):
        import_classifier("no_such_net", tmp_path / "r18.pt", C)


def test_decompose_builds_the_black_box_from_a_users_state_dict(parts_root, tmp_path):
    """`decompose blackbox=<name> blackbox_weights=<file>`: no blackbox stage, exact, and the black
    box it wrote gives the user's model's own logits."""
    model = user_model("resnet10t", {})
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    cfg = stage_cfg(
        "decompose",
        parts_root,
        tmp_path / "dec",
        "blackbox=resnet10t",
        f"blackbox_weights={tmp_path / 'mine.pt'}",
        "model.prototypes_per_class=2",
        "callbacks.faithfulness=null",
        "callbacks.gallery=null",
    )
    result = run_decompose(cfg)
    assert result.metrics["test/agreement"] == 1.0
    assert result.metrics["decompose/relative_head_error"] < 1e-6
    written = BlackBoxClassifier.load_checkpoint(tmp_path / "dec" / "blackbox.ckpt").eval()
    artifact = PostHocPrototypeNetwork.load(result.artifacts["artifact"])
    assert (
        Path(artifact.metadata["blackbox_ckpt"]) == (tmp_path / "dec" / "blackbox.ckpt").resolve()
    )
    datamodule = build(cfg.data)
    datamodule.setup("test")
    images = torch.stack([datamodule.test_set[i]["image"] for i in range(4)])
    with torch.no_grad():
        assert (written(images) - model(images)).abs().max() < 1e-4
        assert (artifact(images) - model(images)).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "needs a black box"),
        (["blackbox=resnet18"], "needs blackbox_weights"),
        (["blackbox=resnet18", "blackbox_weights=w.pt", "blackbox_ckpt=x.ckpt"], "not both"),
    ],
)
def test_decompose_says_which_black_box_settings_are_missing(
    parts_root, tmp_path, overrides, message
):
    with pytest.raises(ConfigValueError, match=message):
        run_decompose(stage_cfg("decompose", parts_root, tmp_path, *overrides))


def test_decompose_refuses_data_of_another_size_than_a_vits_before_the_feature_pass(
    parts_root, tmp_path, monkeypatch
):
    """A ViT saved at 32 px on 48 px data: refused naming both sizes, before any image is read."""
    name, kwargs, _, _ = TIMM_MODELS["vit-avg"]
    torch.save(user_model(name, kwargs).state_dict(), tmp_path / "vit.pt")
    vit_kwargs = "{global_pool: avg, img_size: 32, depth: 2}"
    cfg = stage_cfg(
        "decompose",
        parts_root,
        tmp_path / "dec",
        f"blackbox={name}",
        f"blackbox_weights={tmp_path / 'vit.pt'}",
        f"blackbox_kwargs={vit_kwargs}",
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.5,0.5,0.5]",
    )

    def spy(*args, **kwargs):
        raise AssertionError("the feature pass ran before the check")

    monkeypatch.setattr("proto_lightning.stages.decompose.feature_elements", spy)
    with pytest.raises(ConfigValueError, match=r"image_size 32, data 48.*check_preprocessing"):
        run_decompose(cfg)
    assert not (tmp_path / "dec" / "blackbox.ckpt").exists()
