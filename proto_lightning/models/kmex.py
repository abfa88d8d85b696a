"""KMEx (Gautam et al., TMLR 2024, "Prototypical Self-Explainable Models Without Re-training"): the
other post-hoc route, a nearest-prototype classifier on the frozen black box's embeddings.

With z = mean_j f_j(x) the embedding (the vector the black box's head reads), m_ci the k-means
centres of class c (`prototypes/kmeans.py`) and d_ci = ||z - m_ci|| (L2, as the reference's
`torch.cdist`), the similarity is ProtoPNet's log((d + 1) / (d + eps)) with the reference's
eps = 1e-4, and class c's logit is its nearest prototype's similarity, max_i sim(d_ci): the argmax is
the class of the nearest prototype, which is how the reference predicts (`KMeans.predict`). Unlike
the post-hoc PPN it does not reproduce the black box's decisions; `agreement` measures by how much.

Where an image looks like prototype i: the reference explains with PRP (relevance propagation),
which has no well-kept library. We use the similarity's own first-order attribution: since z is the
mean of the f_j and sim decreases with d, the gradient of sim(d_ci) with respect to f_j is a positive
multiple of (m_ci - z) / d_ci, so location j's term of gradient x input is f_j . (m_ci - z) / d_ci
(how far f_j moves the embedding towards the prototype). A class's heatmap is that map of its
nearest prototype, the only one its logit depends on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.models.blackbox import BlackBoxNet
from proto_lightning.models.files import read_torch_file
from proto_lightning.models.frozen import FrozenPrototypes, restore_blackbox, restored_projection
from proto_lightning.prototypes.network import nearest_patch
from proto_lightning.prototypes.projection import Projection

ARTIFACT_FORMAT = "proto-lightning/kmex/1"


class KMExNetwork(FrozenPrototypes, nn.Module):
    """Frozen `blackbox` embeddings + k-means prototypes (C, k, D): nearest-prototype logits (B, C)."""

    def __init__(
        self,
        blackbox: BlackBoxNet,
        prototypes: torch.Tensor,
        epsilon: float = 1e-4,
        projection: Projection | None = None,
        extras: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.attach(blackbox, prototypes, IncompatibleWeightsError)
        self.epsilon = epsilon
        self.projection = projection
        self.extras = dict(extras or {})

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, D) -> L2 distances to every prototype (B, C, k)."""
        C, k, D = self.prototypes.shape
        return torch.cdist(z, self.prototypes.reshape(C * k, D)).view(len(z), C, k)

    def similarity(self, distances: torch.Tensor) -> torch.Tensor:
        """ProtoPNet's log((d + 1) / (d + eps)), elementwise."""
        return torch.log((distances + 1) / (distances + self.epsilon))

    def similarities(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> every prototype's similarity (B, C, k)."""
        z = self.blackbox.features(x).mean(dim=(2, 3))  # (B, D)
        return self.similarity(self.distances(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H0, W0) -> logits (B, C): each class's nearest prototype's similarity."""
        return self.similarities(x).amax(dim=-1)

    def log_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's class probabilities, as logs (B, C): p_c = sum_i softmax_all(sim)_ci, the
        softmax over all C k prototypes' similarities summed over class c's (SrishtiGautam/KMEx).

        Their softmax is the probability itself, so deletion and insertion (which read the softmax
        of a classifier's output) see the reference's probabilities.
        """
        sims = self.similarities(x)  # (B, C, k)
        return sims.logsumexp(dim=-1) - sims.flatten(1).logsumexp(dim=-1, keepdim=True)

    @torch.no_grad()
    def prototype_maps(
        self, x: torch.Tensor, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The classes' prototypes' maps f_j . (m_ci - z) / d_ci (B, k, h, w) and distances (B, k)."""
        feature_map = self.blackbox.features(x)  # (B, D, h, w)
        z = feature_map.mean(dim=(2, 3))  # (B, D)
        towards = self.prototypes[classes] - z[:, None]  # (B, k, D)
        d = towards.norm(dim=-1)  # (B, k)
        direction = towards / d.clamp_min(1e-12)[..., None]
        return torch.einsum("bdhw,bkd->bkhw", feature_map, direction), d

    def nearest_patch(self, label: int, i: int) -> dict[str, Any]:
        """The training image prototype i of class `label` is shown as (its whole image)."""
        return nearest_patch(self, label, i)

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the artifact (tensors and plain values only) atomically.

        Args:
            path: the file to write (`kmex.pt`).
            metadata: plain values to keep with it.

        Returns:
            The path written.

        Example:
            >>> # kmex.save("kmex.pt"); KMExNetwork.load("kmex.pt", blackbox=net)
        """
        return self.write_artifact(path, ARTIFACT_FORMAT, metadata, epsilon=self.epsilon)

    @classmethod
    def load(
        cls, path: str | Path, blackbox: BlackBoxNet | str | Path | None = None
    ) -> KMExNetwork:
        """Restore an artifact, read as data.

        Args:
            path: a `kmex.pt` that `save` (or `decompose kmex.enabled=true`) wrote.
            blackbox: the black box it was made from (a network or its checkpoint); checked when
                given.

        Returns:
            The `KMExNetwork`.

        Example:
            >>> # KMExNetwork.load("runs/decompose/<date>/kmex.pt", blackbox=net)
        """
        state = read_torch_file(
            path, "KMEx artifact", "run `proto-lightning decompose kmex.enabled=true`"
        )
        if not isinstance(state, dict) or state.get("format") != ARTIFACT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise IncompatibleWeightsError(
                f"{path} is not a KMEx artifact of format {ARTIFACT_FORMAT} (found {found!r})"
            )
        net = restore_blackbox(state["blackbox"], blackbox, path, IncompatibleWeightsError)
        projection = restored_projection(state)
        model = cls(net, state["prototypes"], state["epsilon"], projection, state["extras"])
        model.metadata = state["metadata"]
        return model
