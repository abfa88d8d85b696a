"""LIME (Ribeiro et al., KDD 2016) of the black box on SLIC superpixels, from captum's Lime.

Settings follow the original `lime_image` package where captum leaves a choice: a ridge surrogate
(alpha 1), an exponential kernel of width 0.25 on the cosine distance, hidden superpixels set to the
dataset mean (0 in the normalised input). Superpixels come from scikit-image's SLIC (the original
uses quickshift, whose segment count is hard to control on small images).
"""

from __future__ import annotations

import numpy as np
import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import Lime
from captum.attr._core.lime import get_exp_kernel_similarity_function
from skimage.segmentation import slic
from torch import nn


def superpixels(image: np.ndarray, segments: int, compactness: float) -> np.ndarray:
    """SLIC segmentation of an (H, W, 3) float image -> (H, W) int labels from 0."""
    labels = slic(image, n_segments=segments, compactness=compactness, start_label=0)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


class LimeExplainer:
    """Per image: sample superpixel masks, fit the surrogate, paint each superpixel with its weight."""

    name = "LIME"

    def __init__(
        self,
        net: nn.Module,
        samples: int = 200,
        segments: int = 50,
        compactness: float = 10.0,
        kernel_width: float = 0.25,
        ridge_alpha: float = 1.0,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.net = net.eval()
        self.samples, self.segments, self.compactness = samples, segments, compactness
        self.batch_size, self.seed = batch_size, seed
        self._lime = Lime(
            net,
            interpretable_model=SkLearnRidge(alpha=ridge_alpha),
            similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width),
        )

    def classifier(self, images: torch.Tensor) -> torch.Tensor:
        """The black box's logits (B, C)."""
        return self.net(images)

    @torch.no_grad()
    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """LIME heatmaps (B, H, W): each pixel carries its superpixel's surrogate weight."""
        heatmaps = []
        for image, target in zip(images, targets.tolist(), strict=True):
            rgb = image.permute(1, 2, 0).double().cpu().numpy()  # (H, W, 3)
            mask = torch.from_numpy(superpixels(rgb, self.segments, self.compactness))
            torch.manual_seed(self.seed)  # captum samples masks with the global generator
            weights = self._lime.attribute(
                image[None],
                target=target,
                baselines=0.0,
                feature_mask=mask.to(image.device)[None, None].expand(1, 3, *mask.shape),
                n_samples=self.samples,
                perturbations_per_eval=self.batch_size,
            )  # (1, 3, H, W), constant over each superpixel and channel
            heatmaps.append(weights[0, 0])
        return torch.stack(heatmaps)
