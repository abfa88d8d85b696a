"""LIME (Ribeiro et al., KDD 2016) of the black box, run by the `lime` package's own `LimeImageExplainer`.

`variant="reference"` (the default) is `lime_image.LimeImageExplainer().explain_instance` at its
defaults: quickshift superpixels (kernel_size 4, max_dist 200, ratio 0.2), each hidden superpixel
filled with its own mean colour (`hide_color=None`), 1000 samples of which the first is the original
(all ones), weights sqrt(exp(-d^2 / 0.25^2)) of the cosine distance d between a sample's binary row
and the all-ones row, and a ridge regression (alpha 1) on the explained class's softmax
probability. Only the classifier calls are ours: the package's perturbed images go to the black box
in batches of `batch_size`, normalised as the data is.

`variant="quick"` is a named, cheaper variant for CPU runs: SLIC superpixels (`segments`,
`compactness`) and `quick_samples` samples, everything else as above; the results table names it
("LIME (quick)").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from lime import lime_image
from lime.lime_image import LimeImageExplainer
from lime.wrappers.scikit_image import SegmentationAlgorithm
from torch import nn

from proto_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from proto_lightning.models.adapters import model_device
from proto_lightning.settings import require_choice

VARIANTS = ("reference", "quick")


@contextmanager
def _quiet_progress():
    """The package draws a tqdm progress bar per explained image, and tqdm reads TQDM_DISABLE only
    at import: its `tqdm` is swapped for a silent one during our calls, then put back."""
    drawn = lime_image.tqdm
    lime_image.tqdm = functools.partial(drawn, disable=True)
    try:
        yield
    finally:
        lime_image.tqdm = drawn


class LimeExplainer:
    """Per image: the package samples superpixel masks and fits its surrogate; each pixel of the
    heatmap carries its superpixel's weight for the target class.

    Args:
        net: the black box, normalised images (B, 3, H, W) -> logits (B, C).
        variant: `reference` (lime_image's defaults) or `quick` (SLIC, fewer samples).
        samples: samples per image of the reference variant (lime_image: 1000).
        quick_samples: samples per image of the quick variant.
        segments: SLIC's segment count (quick variant).
        compactness: SLIC's compactness (quick variant).
        kernel_size: quickshift's kernel size (reference variant).
        max_dist: quickshift's maximum distance (reference variant).
        ratio: quickshift's colour/space ratio (reference variant).
        kernel_width: the kernel's width on the cosine distance (lime_image: 0.25).
        batch_size: perturbed images per forward pass.
        mean: the data's normalisation mean, undone for the package (it segments RGB in [0, 1]).
        std: the data's normalisation std.
        seed: seeds the sampler and the segmentation.

    Example:
        >>> # LimeExplainer(net, variant="quick").explain(images, targets)  # (B, H, W)
    """

    name = "LIME"  # the reference variant's row; another variant's names it: "LIME (quick)"

    def __init__(
        self,
        net: nn.Module,
        variant: str = "reference",
        samples: int = 1000,
        quick_samples: int = 200,
        segments: int = 50,
        compactness: float = 10.0,
        kernel_size: int = 4,
        max_dist: float = 200.0,
        ratio: float = 0.2,
        kernel_width: float = 0.25,
        batch_size: int = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        require_choice(variant, VARIANTS, "evaluation.lime.variant")
        self.net = net.eval()
        self.variant = variant
        self.name = "LIME" if variant == "reference" else f"LIME ({variant})"
        self.samples = samples if variant == "reference" else quick_samples
        self.segmentation = (
            ("quickshift", {"kernel_size": kernel_size, "max_dist": max_dist, "ratio": ratio})
            if variant == "reference"
            else ("slic", {"n_segments": segments, "compactness": compactness, "start_label": 0})
        )
        self.kernel_width, self.batch_size, self.seed = kernel_width, batch_size, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def classifier(self, images: torch.Tensor) -> torch.Tensor:
        """The black box's logits (B, C)."""
        return self.net(images)

    @torch.no_grad()
    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """The package's classifier_fn: RGB images (n, H, W, 3) in [0, 1] -> softmax (n, C)."""
        device = model_device(self.net)
        x = torch.from_numpy(rgb).float().permute(0, 3, 1, 2)  # (n, 3, H, W)
        x = ((x - self.mean) / self.std).to(device)
        return self.net(x).softmax(dim=1).double().cpu().numpy()

    def weights(self, image: torch.Tensor, target: int) -> tuple[np.ndarray, dict[int, float]]:
        """One normalised image (3, H, W): the package's superpixels (H, W) and each one's weight."""
        rgb = (image[None].cpu().float() * self.std + self.mean)[0]  # (3, H, W), back in [0, 1]
        rgb = rgb.permute(1, 2, 0).double().numpy()  # (H, W, 3)
        algorithm, settings = self.segmentation
        segment = SegmentationAlgorithm(algorithm, random_seed=self.seed, **settings)

        def segmenter(
            picture: np.ndarray,
        ) -> np.ndarray:  # RGB outside [0, 1] only where rounding put it
            return segment(np.clip(picture, 0.0, 1.0))

        explainer = LimeImageExplainer(kernel_width=self.kernel_width, random_state=self.seed)
        with _quiet_progress():
            explanation = explainer.explain_instance(
                rgb,
                self.probabilities,
                labels=(target,),
                top_labels=None,
                hide_color=None,
                num_samples=self.samples,
                batch_size=self.batch_size,
                segmentation_fn=segmenter,
                random_seed=self.seed,
            )
        return explanation.segments, dict(explanation.local_exp[target])

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """LIME heatmaps: each pixel carries its superpixel's surrogate weight.

        Args:
            images: normalised images (B, 3, H, W), explained one at a time.
            targets: the class to explain per image (B,).

        Returns:
            Heatmaps (B, H, W) at the input size.
        """
        heatmaps = []
        for image, target in zip(images, targets.tolist(), strict=True):
            segments, weights = self.weights(image, target)
            lookup = np.zeros(segments.max() + 1)
            for segment, weight in weights.items():
                lookup[segment] = weight
            heatmaps.append(torch.from_numpy(lookup[segments]).float())
        return torch.stack(heatmaps).to(images.device)
