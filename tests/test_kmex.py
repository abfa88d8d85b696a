"""KMEx: k-means prototypes per class and a nearest-prototype classifier, against a hand-worked example
and autograd."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from proto_lightning.errors import ConfigValueError, IncompatibleWeightsError
from proto_lightning.explainers import KMExExplainer
from proto_lightning.models import BlackBoxNet
from proto_lightning.models.kmex import KMExNetwork
from proto_lightning.prototypes.features import ClassBatch, FeatureStore
from proto_lightning.prototypes.kmeans import KMeansSettings, centres_of, image_embeddings

# two classes, four images each, D = 2; each image's embedding is the mean of its two patches
EMBEDDINGS = {
    0: [(0.0, 0.0), (0.0, 0.2), (10.0, 0.0), (10.0, 0.2)],  # k-means, k = 2: (0, 0.1), (10, 0.1)
    1: [(0.0, 5.0), (0.0, 5.2), (0.0, 20.0), (0.0, 20.2)],  # (0, 5.1), (0, 20.1)
}
CENTRES = {0: [(0.0, 0.1), (10.0, 0.1)], 1: [(0.0, 5.1), (0.0, 20.1)]}


def hand_store() -> FeatureStore:
    """Patches z - a and z + a for each image z (a differs per image), so the mean is z; 1 x 2 maps."""
    patches, labels = [], []
    for c, points in EMBEDDINGS.items():
        for n, z in enumerate(points):
            a = np.array([0.5 * (n + 1), -1.5])
            patches += [np.array(z) - a, np.array(z) + a]
            labels += [c, c]
    images = np.repeat(np.arange(8), 2)
    return FeatureStore(
        features=np.array(patches, dtype=np.float32),
        rows=images,
        image_ids=images + 1,
        locations=np.tile([[0, 0], [0, 1]], (8, 1)),
        labels=np.array(labels),
        offsets=np.array([0, 8, 16]),
        map_size=(1, 2),
    )


def network_with_d2(prototypes: torch.Tensor) -> KMExNetwork:
    """A KMEx network whose black box's head is (C=2, D=2); only its embeddings-side math is used."""
    net = BlackBoxNet("small_cnn", 2)
    net.head = nn.Linear(2, 2)
    return KMExNetwork(net, prototypes)


def test_the_image_embeddings_are_the_means_of_their_patches():
    embeddings = image_embeddings(ClassBatch.of_store(hand_store(), [0, 1], "cpu"))
    for c in (0, 1):
        assert np.allclose(embeddings[c], np.array(EMBEDDINGS[c]), atol=1e-6)


def test_two_class_example_worked_by_hand():
    embeddings = image_embeddings(ClassBatch.of_store(hand_store(), [0, 1], "cpu"))
    centres = torch.stack(
        [centres_of(embeddings[c], c, KMeansSettings(2, 10, 300), 0) for c in (0, 1)]
    )
    for c in (0, 1):  # k-means' order of the clusters is arbitrary: compare sorted by the first
        found = sorted(map(tuple, centres[c].tolist()))
        assert np.allclose(found, sorted(CENTRES[c]), atol=1e-5)
    model = network_with_d2(centres)
    z = torch.tensor([[0.0, 6.0], [9.0, 0.0]])
    logits = model.similarity(model.distances(z)).amax(-1)  # (2 queries, 2 classes)

    def sim(d):
        return math.log((d + 1) / (d + 1e-4))

    # (0, 6): nearest of class 0 is (0, 0.1) at 5.9; of class 1, (0, 5.1) at 0.9 -> class 1
    # (9, 0): nearest of class 0 is (10, 0.1) at sqrt(1.01); of class 1, (0, 5.1) at sqrt(107.01)
    expected = [[sim(5.9), sim(0.9)], [sim(math.sqrt(1.01)), sim(math.sqrt(107.01))]]
    assert torch.allclose(logits, torch.tensor(expected), atol=1e-5)
    assert logits.argmax(1).tolist() == [1, 0]


def test_a_class_with_fewer_images_than_prototypes_is_refused():
    with pytest.raises(ConfigValueError, match="class 0 has 4 training images, fewer than"):
        centres_of(np.array(EMBEDDINGS[0]), 0, KMeansSettings(5), 0)


def test_the_prototype_maps_are_the_similaritys_gradient_times_input():
    torch.manual_seed(0)
    net = BlackBoxNet("small_cnn", 3).eval()
    model = KMExNetwork(net, torch.rand(3, 2, 128))
    images, classes = torch.randn(2, 3, 32, 32), torch.tensor([2, 0])
    maps, d = model.prototype_maps(images, classes)  # (2, 2, 4, 4)
    for b in range(2):
        for i in range(2):
            f = net.features(images[b : b + 1]).detach().requires_grad_(True)  # (1, D, 4, 4)
            z = f.mean(dim=(2, 3))
            distance = (z - model.prototypes[classes[b], i]).norm()
            model.similarity(distance).backward()
            reference = (f.grad * f).sum(1)[0]  # gradient x input, summed over channels
            ratio = reference / maps[b, i]
            # a positive multiple, the same at every location
            assert (ratio > 0).all() and torch.allclose(
                ratio, ratio.mean().expand_as(ratio), rtol=1e-3
            )
            assert torch.isclose(d[b, i], distance.detach(), rtol=1e-5)
    explainer = KMExExplainer(model)
    heatmap = explainer.explain(images, classes)  # the nearest prototype's map, upsampled
    nearest = d.argmin(1)
    assert heatmap.shape == (2, 32, 32)
    assert torch.allclose(
        heatmap.mean(dim=(1, 2)), maps[torch.arange(2), nearest].mean(dim=(1, 2)), rtol=1e-4
    )


def test_the_artifact_reads_back_as_data_and_refuses_another_black_box(tmp_path):
    torch.manual_seed(0)
    net = BlackBoxNet("small_cnn", 3).eval()
    model = KMExNetwork(net, torch.rand(3, 2, 128))
    model.save(tmp_path / "kmex.pt", {"note": "test"})
    again = KMExNetwork.load(tmp_path / "kmex.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again(x), model(x))
    assert again.metadata == {"note": "test"}
    with pytest.raises(IncompatibleWeightsError, match="another black box"):
        KMExNetwork.load(tmp_path / "kmex.pt", blackbox=BlackBoxNet("small_cnn", 3))


def test_class_probabilities_are_the_references_summed_softmax():
    """The reference's probability, transcribed in numpy: a softmax over all C k prototypes'
    similarities log((d + 1) / (d + 1e-4)), summed over each class's prototypes. The explainer's
    classifier (what deletion/insertion read) has exactly these as its softmax; predictions stay
    the nearest prototype's class."""
    torch.manual_seed(0)
    net = BlackBoxNet("small_cnn", 3).eval()
    prototypes = torch.rand(3, 4, net.head.in_features)
    model = KMExNetwork(net, prototypes).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        z = net.features(x).mean(dim=(2, 3)).double().numpy()  # (B, D)
        explainer = KMExExplainer(model)
        ours = explainer.classifier(x).softmax(dim=1).double().numpy()
        predicted = explainer.predictor(x).argmax(1).numpy()
    m = prototypes.reshape(12, -1).double().numpy()
    d = np.sqrt(((z[:, None, :] - m[None]) ** 2).sum(-1))  # (B, C k)
    sim = np.log((d + 1) / (d + 1e-4))
    soft = np.exp(sim - sim.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    reference = soft.reshape(5, 3, 4).sum(-1)  # (B, C)
    assert np.allclose(ours, reference, atol=1e-6)
    assert (predicted == d.argmin(1) // 4).all()  # the nearest prototype's class
