"""The part-prototype networks behind the explainer interface (post-hoc PPN, ProtoPNet, KMEx).

Post-hoc PPN: a class's heatmap is the sum of its prototypes' maps, sum_i f(h, w) . p~_i = f(h, w) . v_c
(the refined prototypes sum to the head row exactly), i.e. every "this looks like that" term at once.
ProtoPNet: a class's heatmap is its logit before max-pooling, sum_j w_cj sim_j(h, w) over all
prototypes j (last-layer weights w, similarity log((d + 1) / (d + eps)) at each location).
KMEx: a class's heatmap is its nearest prototype's gradient x input map (models/kmex.py).
"""

from __future__ import annotations

import torch

from proto_lightning.explainers.base import to_input_size
from proto_lightning.models.kmex import KMExNetwork
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.models.protopnet import ProtoPNet


class PostHocExplainer:
    """The post-hoc part-prototype network: explains the black box's own decisions."""

    name = "Post-hoc PPN"

    def __init__(self, model: PostHocPrototypeNetwork, label: str = "") -> None:
        """`label` names one of several post-hoc networks in a table: `Post-hoc PPN (<label>)`."""
        self.model = model.eval()
        self.name = self.row_name(label)
        self.prototypes_per_class = model.prototypes_per_class

    @classmethod
    def row_name(cls, label: str = "") -> str:
        """The table row of a post-hoc network: `Post-hoc PPN`, or `Post-hoc PPN (<label>)`."""
        return f"{cls.name} ({label})" if label else cls.name

    def classifier(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C), equal to the black box's."""
        return self.model(images)

    def prototype_maps(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Maps f . p~_i of the classes' prototypes (B, k, h, w): the network's own."""
        return self.model.prototype_maps(images, classes)

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum of the target class's prototype maps: the network's `heatmaps`.

        Args:
            images: normalised images (B, 3, H, W).
            targets: the class to explain per image (B,).

        Returns:
            Heatmaps (B, H, W) at the input size.

        Example:
            >>> # PostHocExplainer(network).explain(images, network(images).argmax(1))
        """
        return self.model.heatmaps(images, targets)


class ProtoPNetExplainer:
    """ProtoPNet: explains its own decisions (a different model from the black box)."""

    name = "ProtoPNet"

    def __init__(self, model: ProtoPNet) -> None:
        self.model = model.eval()
        self.net = model.net
        self.prototypes_per_class = model.prototypes_per_class

    def classifier(self, images: torch.Tensor) -> torch.Tensor:
        """ProtoPNet's logits (B, C)."""
        return self.net(images)[0]

    @torch.no_grad()
    def similarity_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Every prototype's similarity at every location (B, m, h, w), the official activation."""
        return self.net.similarity(self.net.l2_distances(self.net.conv_features(images)))

    @torch.no_grad()
    def prototype_maps(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Similarity maps of the classes' own prototypes (B, k, h, w), as EvalProtoPNet reads them."""
        k = self.prototypes_per_class
        index = classes[:, None] * k + torch.arange(k, device=classes.device)  # (B, k)
        maps = self.similarity_maps(images)
        return maps.gather(1, index[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))

    @torch.no_grad()
    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The target logit's map before max pooling, sum_j w_cj sim_j(h, w) (B, H, W)."""
        weights = self.net.last_layer.weight[targets]  # (B, m)
        return to_input_size(
            torch.einsum("bmhw,bm->bhw", self.similarity_maps(images), weights), images
        )


class KMExExplainer:
    """KMEx: a nearest-prototype classifier on the black box's embeddings (its own decisions)."""

    name = "KMEx"

    def __init__(self, model: KMExNetwork) -> None:
        self.model = model.eval()
        self.prototypes_per_class = model.prototypes_per_class

    def classifier(self, images: torch.Tensor) -> torch.Tensor:
        """Log class probabilities (B, C) as the reference computes them (`log_probabilities`)."""
        return self.model.log_probabilities(images)

    def predictor(self, images: torch.Tensor) -> torch.Tensor:
        """Scores whose argmax is KMEx's prediction: the nearest prototype's class (`KMeans.predict`)."""
        return self.model(images)

    @torch.no_grad()
    def prototype_maps(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Gradient x input maps of the classes' prototypes (B, k, h, w)."""
        return self.model.prototype_maps(images, classes)[0]

    @torch.no_grad()
    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The map of the target class's nearest prototype (B, H, W)."""
        maps, distances = self.model.prototype_maps(images, targets)  # (B, k, h, w), (B, k)
        nearest = maps[torch.arange(len(maps), device=maps.device), distances.argmin(1)]
        return to_input_size(nearest, images)
