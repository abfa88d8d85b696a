"""The Python facade `PostHocPPN` on a user's own in-memory classifier (random weights, CPU).

References are independent of our code: the user's model's own forward for every logit, the head
error computed here from the head and the prototypes, a brute-force search over the dataset's own
images for the nearest patches, and the user's state dict before the fit.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from proto_lightning import NotDecomposableError, PostHocPPN, Preprocessing
from proto_lightning.posthoc_ppn import NotFittedError, PreprocessingMismatchError
from proto_lightning.prototypes import stream as stream_module

C = 3


class TinyNet(nn.Module):
    """A custom classifier: conv body, average pooling, linear head (or max pooling, which fails)."""

    def __init__(self, pool: str = "avg") -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3))
        self.fc = nn.Linear(16, C)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return self.fc(f.mean((2, 3)) if self.pool == "avg" else f.amax((2, 3)))


def _random_head(model: nn.Module, head: nn.Linear) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        head.weight.normal_(0, 0.5)
        head.bias.normal_(0, 0.5)
    return model.eval()


def make(kind: str) -> tuple[nn.Module, dict, int]:
    """(model, facade keyword arguments, input size) of each family the issue names."""
    torch.manual_seed(0)
    if kind == "custom":
        m = TinyNet()
        return _random_head(m, m.fc), {"features": m.body, "head": m.fc}, 32
    if kind == "timm_convnext":
        m = timm.create_model("convnext_atto", num_classes=C)
        return _random_head(m, m.get_classifier()), {}, 64
    if kind == "timm_vit_avg":
        m = timm.create_model(
            "vit_tiny_patch16_224", num_classes=C, global_pool="avg", img_size=32, depth=2
        )
        return _random_head(m, m.get_classifier()), {}, 32
    m = torchvision.models.get_model(kind, num_classes=C)
    head = m.fc if hasattr(m, "fc") else m.classifier[-1]
    return _random_head(m, head), {}, 64


def images_and_labels(size: int, n: int = 12) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 3, size, size, generator=generator), torch.arange(n) % C)


FAMILIES = [
    "resnet18",
    "efficientnet_b0",
    "mobilenet_v2",
    "convnext_tiny",
    "timm_convnext",
    "timm_vit_avg",
    "custom",
]


@pytest.mark.parametrize("kind", FAMILIES)
def test_fit_is_exact_leaves_the_model_unchanged_and_round_trips(kind, tmp_path):
    model, kwargs, size = make(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = images_and_labels(size)
    ppn = PostHocPPN(model, prototypes_per_class=2, **kwargs)
    ppn.fit(DataLoader(data, batch_size=5, shuffle=True))

    x = data.tensors[0]
    with torch.no_grad():
        reference = model(x)
        assert (ppn(x) - reference).abs().max() < 1e-4
    V = ppn.blackbox.head.weight.detach().double()
    assert float((V - ppn.prototypes.double().sum(1)).norm() / V.norm()) < 1e-6
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

    path = ppn.save(tmp_path / "posthoc.pt")
    back = PostHocPPN.load(path, model=model, **kwargs)
    with torch.no_grad():
        assert torch.equal(back(x), ppn(x))
    assert torch.equal(back.prototypes, ppn.prototypes)


def test_nearest_patches_are_the_brute_force_winners_of_a_shuffled_loader():
    """Rows are dataset indices even from a shuffled loader: each prototype's patch is the arg-max of
    f . p~ over its class's images, searched here by hand over `dataset[row]`."""
    model, kwargs, size = make("resnet18")
    data = images_and_labels(size)
    ppn = PostHocPPN(model, prototypes_per_class=2).fit(DataLoader(data, 4, shuffle=True))
    x, y = data.tensors
    with torch.no_grad():
        fmap = ppn.blackbox.features(x)  # (N, D, H, W)
    for c in range(C):
        for i in range(2):
            scores = torch.einsum("ndhw,d->nhw", fmap, ppn.prototypes[c, i])
            scores[y != c] = -torch.inf
            n, h, w = (int(v) for v in torch.unravel_index(scores.argmax(), scores.shape))
            found = ppn.fitted.nearest_patch(c, i)
            assert (found["row"], found["location"]) == (n, (h, w))


class NoLabels(Dataset):
    """A dataset that does not tell its labels without reading its items."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


def test_a_dataset_without_a_label_list_gives_the_same_prototypes():
    model, _, size = make("resnet18")
    data = images_and_labels(size)
    known = PostHocPPN(model, prototypes_per_class=2).fit(DataLoader(data, 5))
    unknown = PostHocPPN(model, prototypes_per_class=2).fit(DataLoader(NoLabels(data), 5))
    assert torch.allclose(known.prototypes, unknown.prototypes, atol=1e-6)
    assert known.fitted.projection.rows.tolist() == unknown.fitted.projection.rows.tolist()


def test_explain_takes_one_image_and_its_terms_sum_to_the_logit():
    model, _, size = make("resnet18")
    data = images_and_labels(size)
    ppn = PostHocPPN(model, prototypes_per_class=2).fit(DataLoader(data, 6))
    image = data.tensors[0][0]  # (3, H, W): no batch dimension
    (explained,) = ppn.explain(image)
    with torch.no_grad():
        logits = model(image[None])[0]
    assert explained.label == int(logits.argmax())
    bias = float(model.fc.bias[explained.label])
    assert abs(float(explained.contributions.sum()) + bias - float(logits.max())) < 1e-4
    assert explained.upsampled.shape == (2, size, size)
    heatmap = ppn.heatmaps(image, explained.label)
    assert heatmap.shape == (1, size, size)
    assert torch.allclose(heatmap[0], explained.upsampled.sum(0), atol=1e-5)


def test_nearest_patches_keep_the_image_file_of_a_folder_dataset(tmp_path):
    from PIL import Image

    for c in range(C):
        (tmp_path / f"class{c}").mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * c + 10 * i, 80, 120)).save(
                tmp_path / f"class{c}" / f"{i}.png"
            )
    folder = torchvision.datasets.ImageFolder(tmp_path, transform=torchvision.transforms.ToTensor())
    model, kwargs, _ = make("custom")
    ppn = PostHocPPN(model, prototypes_per_class=1, **kwargs).fit(DataLoader(folder, 4))
    found = ppn.explain(folder[0][0])[0].nearest[0]
    assert found["path"] == folder.samples[found["row"]][0]


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("max_pooled", "max pooling"),
        ("mobilenet_v3_small", "MLP"),
        ("vit_token", "class token"),
    ],
)
def test_models_whose_head_is_not_linear_on_a_spatial_mean_are_refused_with_the_reason(
    kind, reason
):
    if kind == "max_pooled":
        model = TinyNet(pool="max").eval()
        kwargs = {"features": model.body, "head": model.fc}
    elif kind == "vit_token":
        model, kwargs = timm.create_model("vit_tiny_patch16_224", num_classes=C, depth=1), {}
    else:
        model, kwargs = torchvision.models.get_model(kind, num_classes=C), {}
    with pytest.raises(NotDecomposableError, match=reason):
        PostHocPPN(model, **kwargs)


def test_a_model_of_another_family_without_features_and_head_is_told_what_to_pass():
    with pytest.raises(NotDecomposableError, match="features=.*head="):
        PostHocPPN(TinyNet())


def test_preprocessing_that_disagrees_with_a_timm_models_is_refused_before_any_feature_pass(
    monkeypatch,
):
    model, _, size = make("timm_vit_avg")  # declares mean (0.5, 0.5, 0.5) and a fixed 32 px input
    with pytest.raises(PreprocessingMismatchError, match=r"image_size 32, data 48"):
        PostHocPPN(model, preprocessing=Preprocessing(48, (0.5,) * 3, (0.5,) * 3))
    ppn = PostHocPPN(model)

    class DataModule:  # the datamodule interface fit reads: its preprocessing and its loader
        image_size, mean, std = 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

        def setup(self, stage):
            pass

        def train_dataloader(self):
            return DataLoader(images_and_labels(size), 4)

    def spy(*args, **kwargs):
        raise AssertionError("the feature pass ran before the check")

    monkeypatch.setattr("proto_lightning.posthoc_ppn.feature_elements", spy)
    with pytest.raises(PreprocessingMismatchError, match=r"mean \(0\.5, 0\.5, 0\.5\), data"):
        ppn.fit(DataModule())
    assert stream_module.feature_elements is not spy


def test_load_needs_the_model_it_was_made_from(tmp_path):
    model, kwargs, size = make("custom")
    ppn = PostHocPPN(model, prototypes_per_class=1, **kwargs).fit(
        DataLoader(images_and_labels(size), 6)
    )
    path = ppn.save(tmp_path / "posthoc.pt")
    from proto_lightning.models.posthoc_network import (
        IncompatibleArtifactError,
        PostHocNetwork,
    )

    with pytest.raises(IncompatibleArtifactError, match=r"model=<that model>"):
        PostHocNetwork.load(path)
    other = TinyNet().eval()
    other.fc.load_state_dict(model.fc.state_dict())  # same head, another body
    with pytest.raises(IncompatibleArtifactError, match="probe"):
        PostHocPPN.load(path, model=other, features=other.body, head=other.fc)
    assert torch.load(path, weights_only=True)["format"].startswith("proto-lightning/posthoc")


def test_explaining_before_fit_says_to_fit():
    model, _, _ = make("resnet18")
    with pytest.raises(NotFittedError, match="fit"):
        PostHocPPN(model).explain(torch.rand(1, 3, 64, 64))


def test_labels_outside_the_heads_classes_are_refused_before_factorising():
    """Label 3 for a 3-class head (0..2): refused naming both, on either feature path."""
    from proto_lightning.errors import ConfigValueError

    model, _, size = make("resnet18")
    x = images_and_labels(size).tensors[0][:6]
    for labels in (torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, -1, 0, 1])):
        data = TensorDataset(x, labels)
        for dataset in (data, NoLabels(data)):  # labels listed, or known from the batches only
            with pytest.raises(ConfigValueError, match=r"head has 3 classes \(0\.\.2\)"):
                PostHocPPN(model, prototypes_per_class=1).fit(DataLoader(dataset, 3))
    ok = PostHocPPN(model, prototypes_per_class=1).fit(
        DataLoader(TensorDataset(x, torch.tensor([0, 1, 2, 2, 0, 1])), 3)
    )
    assert ok.prototypes.shape[:2] == (3, 1)  # 0 and C - 1 are in range
