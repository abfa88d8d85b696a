"""Faithfulness and part metrics of a module's own explanations while it trains and tests (docs/method.md, "Metrics").

The numbers are `evaluate`'s, from the same functions (evaluation/scores.py) on a fixed, seeded subset
of the split: deletion and insertion AUC of the heatmaps of the predicted class (RISE, Petsiuk et al.
2018), and for a part-prototype network on data with part keypoints, consistency and stability
(EvalProtoPNet, Huang et al. 2023). Under DDP each rank explains a contiguous share of the subset and
the per-image values are gathered, so every rank logs the value over the whole subset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch

from proto_lightning.distributed import contiguous_share, gather_images
from proto_lightning.errors import ConfigValueError
from proto_lightning.evaluation.artifacts import Models
from proto_lightning.evaluation.methods import EXPLAINERS, Normalisation
from proto_lightning.evaluation.scores import (
    consistency_score,
    explain_and_measure,
    faithfulness_subset,
    part_coverage,
    reference_keypoints_of,
    stability_score,
)
from proto_lightning.explainers import (
    Explainer,
    PostHocExplainer,
    ProtoPNetExplainer,
    PrototypeExplainer,
)
from proto_lightning.metrics.part_consistency import (
    metric_label,
    part_protocol,
    region_half_size,
)
from proto_lightning.models.blackbox import BlackBoxClassifier
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.models.protopnet import ProtoPNet

# methods of evaluation/methods.py that explain a black box
BLACKBOX_EXPLAINERS = ("gradcam", "lime")
# logged as <split>/<metric>
METRICS = ("deletion_auc", "insertion_auc", "consistency", "stability")


def module_explainer(
    module: L.LightningModule,
    blackbox_method: str,
    settings: Mapping[str, Any],
    seed: int,
    normalisation: Normalisation,
) -> Explainer:
    """The explainer of a module: a prototype network explains itself, a black box `blackbox_method`
    (`normalisation`: the data's mean and std, which LIME undoes)."""
    if isinstance(module, ProtoPNet):
        return ProtoPNetExplainer(module)
    if isinstance(module, PostHocPrototypeNetwork):
        return PostHocExplainer(module)
    if isinstance(module, BlackBoxClassifier):
        models = Models(blackbox=module.net, posthocs={}, protopnet=None, paths={})
        return EXPLAINERS[blackbox_method](models, settings, seed, normalisation)[blackbox_method]
    raise TypeError(f"no explainer for a {type(module).__name__}")


class FaithfulnessCallback(L.Callback):
    """Logs `<split>/deletion_auc`, `<split>/insertion_auc` and, with part keypoints and a prototype
    network, `<split>/consistency` and `<split>/stability`, every `every_n_epochs` validations and at
    test; around each ProtoPNet push, `push/<metric>_before` and `push/<metric>_after` on the test subset.

    `evaluation` is an `evaluation` config (conf/evaluation): its substrates, batch sizes and part
    protocol are used as `evaluate` uses them; `images` and `steps` replace its subset size and
    deletion/insertion steps (None: every image of the split).
    """

    def __init__(
        self,
        evaluation: Mapping[str, Any],
        images: int | None = 16,
        steps: int = 10,
        every_n_epochs: int = 5,
        blackbox_explainer: str = "gradcam",
        seed: int = 0,
        around_push: bool = True,
    ) -> None:
        if blackbox_explainer not in BLACKBOX_EXPLAINERS:
            raise ConfigValueError(
                f"callbacks.faithfulness.blackbox_explainer={blackbox_explainer!r}: choose one of "
                f"{', '.join(BLACKBOX_EXPLAINERS)}"
            )
        if every_n_epochs < 1:
            raise ConfigValueError(
                f"callbacks.faithfulness.every_n_epochs={every_n_epochs}: use >= 1"
            )
        faithfulness = {**evaluation["faithfulness"], "images": images, "steps": steps}
        self.settings = {**evaluation, "faithfulness": faithfulness}
        self.images, self.every_n_epochs = images, every_n_epochs
        self.blackbox_explainer, self.seed, self.around_push = blackbox_explainer, seed, around_push

    # ---- hooks ----------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._log(trainer, pl_module, trainer.datamodule.val_set, "val/{}")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, trainer.datamodule.test_set, "test/{}")

    def on_push_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called by ProtoPNet right before a push."""
        if self.around_push:
            self._log(trainer, pl_module, trainer.datamodule.test_set, "push/{}_before")

    def on_push_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called by ProtoPNet right after a push."""
        if self.around_push:
            self._log(trainer, pl_module, trainer.datamodule.test_set, "push/{}_after")

    # ---- measurement ----------------------------------------------------------------------------
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, dataset, key: str) -> None:
        if len(dataset) == 0:
            return
        values = self.measure(
            pl_module, trainer.datamodule, dataset, trainer.global_rank, trainer.world_size
        )
        for name, value in values.items():
            # every rank holds the value over the whole subset already: no reduction
            pl_module.log(key.format(name), value, sync_dist=False)

    def measure(
        self, module: L.LightningModule, datamodule, dataset, rank: int = 0, world: int = 1
    ) -> dict[str, float]:
        """The metrics of `module`'s explanations on the seeded subset of `dataset` (this rank's share
        explained here, every rank's gathered)."""
        was_training = module.training
        # Lightning validates under inference mode; Grad-CAM needs gradients, so step out of it.
        # The random generators are forked: the measurement (its loaders draw seeds) must not
        # change the shuffles and augmentations of the training that follows.
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False):
            normalisation = (datamodule.mean, datamodule.std)
            explainer = module_explainer(
                module, self.blackbox_explainer, self.settings, self.seed, normalisation
            )
            subset = faithfulness_subset(len(dataset), self.images, self.seed)
            mine = subset[contiguous_share(len(subset), rank, world)]
            values = self._faithfulness(explainer, dataset, mine, module.device)
            if isinstance(explainer, PrototypeExplainer) and datamodule.num_parts > 0:
                values.update(self._parts(explainer, datamodule, dataset, mine, module))
        module.train(was_training)
        return values

    def _faithfulness(
        self, explainer: Explainer, dataset, mine: np.ndarray, device: torch.device
    ) -> dict[str, float]:
        local = None
        if len(mine):
            images = torch.stack([dataset[int(i)]["image"] for i in mine]).to(device)
            local = explain_and_measure(explainer, images, self.settings)[2]
        curves = gather_images(local)
        return {
            "deletion_auc": float(np.mean(curves.deletion_auc)),
            "insertion_auc": float(np.mean(curves.insertion_auc)),
        }

    def _parts(
        self, explainer: PrototypeExplainer, datamodule, dataset, mine: np.ndarray, module
    ) -> dict[str, float]:
        parts = self.settings["parts"]
        protocol = part_protocol(parts["protocol"], datamodule.image_size)
        local = None
        if len(mine):
            local = part_coverage(
                explainer,
                datamodule.subset_loader(dataset, mine),
                datamodule.num_parts,
                region_half_size(datamodule.image_size, parts["half_size"], protocol),
                parts["noise_std"],
                parts["noise_clip"],
                self.seed,
                module.device,
                protocol,
                reference_keypoints_of(dataset) if protocol == "reference" else None,
            )
        coverage = gather_images(local)
        C = datamodule.num_classes
        return {  # keys name a protocol other than the reference's, as evaluate's do
            metric_label("consistency", protocol): consistency_score(
                coverage, C, parts["threshold"]
            ),
            metric_label("stability", protocol): stability_score(coverage, C),
        }
