"""`PostHocPPN`: explain the classifier in your notebook as a post-hoc part-prototype network.

Construct -> fit -> explain, as captum's fitted explainers are used:

    ppn = PostHocPPN(model, prototypes_per_class=3)  # finds body and head, checks exactness on a probe
    ppn.fit(train_loader)                            # (images, labels) batches, dict batches, a datamodule
    ppn(images)                                      # == model(images)
    ppn.explain(images)                              # ranked "this looks like that" terms per image
    ppn.heatmaps(images, targets)                    # (B, H, W), the explainer interface
    ppn.save("posthoc.pt"); PostHocPPN.load("posthoc.pt", model=model)

The steps of `fit` are the ones the `decompose` stage runs (BatchPlan -> planned_batches ->
decompose_stream -> posthoc_boxes -> PostHocNetwork); the stage adds
configuration, DDP sharding, artifacts and logging. This module imports neither Hydra, W&B nor Lightning, and FAISS only when a
fit projects the prototypes.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from proto_lightning.data.loaders import (
    class_loader,
    dataset_labels,
    dict_batches,
    image_of,
    image_path,
    sequential_loader,
)
from proto_lightning.errors import ConfigValueError, ProtoLightningError
from proto_lightning.models.adapters import (
    Preprocessing,
    PreprocessingMismatchError,
    check_probe,
    declared_preprocessing,
    model_device,
    require_preprocessing,
    split_classifier,
)
from proto_lightning.models.blackbox_net import BlackBoxNet
from proto_lightning.models.posthoc_network import PostHocNetwork, network_extras
from proto_lightning.models.timm_backbones import probe_size
from proto_lightning.prototypes.boxes import posthoc_boxes
from proto_lightning.prototypes.decomposition import NMFSettings, RefinementSettings
from proto_lightning.prototypes.features import (
    SPILL_FILE,
    ClassBatch,
    collect_features,
    require_labels_below,
)
from proto_lightning.prototypes.projection import ProjectionSettings
from proto_lightning.prototypes.stream import (
    BatchPlan,
    BatchSettings,
    StreamSteps,
    decompose_stream,
    feature_elements,
    planned_batches,
)

log = logging.getLogger(__name__)


class NotFittedError(ProtoLightningError, RuntimeError):
    """The facade was asked to explain before `fit` (or `load`) gave it prototypes."""


class PostHocPPN(nn.Module):
    """A trained classifier's head decomposed into part-prototypes (Tan, Zhou & Chen, ICML 2024).

    The classifier stays frozen and unchanged; after `fit` every logit is a sum of "this patch looks
    like that prototype" terms plus the bias, equal to the classifier's own logit (float32).

    Args:
        model: the trained classifier, images (B, 3, H, W) -> logits (B, C), used in eval mode.
            torchvision ResNet, DenseNet, RegNet, EfficientNet, MobileNetV2, ConvNeXt and timm
            models are split into body and head automatically.
        prototypes_per_class: k, the prototypes of each class.
        features: for any other model, the layer whose output is the last feature map (B, D, H, W),
            or a callable images -> that map.
        head: with `features`, the model's `nn.Linear` classifier on the map's spatial mean.
        preprocessing: the data's image size, mean and std, recorded in the artifact; checked
            against what the model declares (timm's `pretrained_cfg`) unless `check_preprocessing`
            is False.
        nmf: the discovery step's settings (defaults: the CLI's `conf/model/posthoc.yaml`).
        refinement: the refinement step's settings (likewise).
        projection: the nearest-patch projection's settings (likewise).
        seed: seeds the factorisation.
        batches: how much of the features one class batch may hold on the device
            (`max_batch_gb`) and how much memory and disk to leave free (`reserve_gb`).

    Raises:
        NotDecomposableError: the head is not linear on a spatial mean (the reason is named).
        PreprocessingMismatchError: `preprocessing` disagrees with the model's declaration.

    Example:
        >>> import torch, torchvision
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = torchvision.models.resnet18(num_classes=2).eval()
        >>> data = TensorDataset(torch.rand(8, 3, 64, 64), torch.arange(8) % 2)
        >>> ppn = PostHocPPN(model, prototypes_per_class=2).fit(DataLoader(data, batch_size=4))
        >>> torch.allclose(ppn(data.tensors[0]), model(data.tensors[0]), atol=1e-4)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        prototypes_per_class: int = 3,
        features: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        head: nn.Linear | None = None,
        preprocessing: Preprocessing | None = None,
        check_preprocessing: bool = True,
        nmf: NMFSettings | None = None,
        refinement: RefinementSettings | None = None,
        projection: ProjectionSettings | None = None,
        seed: int = 0,
        batches: BatchSettings | None = None,
    ) -> None:
        super().__init__()
        if prototypes_per_class < 1:
            raise ConfigValueError(f"prototypes_per_class must be >= 1, got {prototypes_per_class}")
        model.eval()
        parts = split_classifier(model, features, head)
        self.declared = declared_preprocessing(model)
        self.check_preprocessing = check_preprocessing
        if preprocessing is not None and check_preprocessing:
            require_preprocessing(self.declared, preprocessing, "the given preprocessing")
        self.preprocessing = preprocessing or self.declared or Preprocessing()
        size = self.preprocessing.image_size
        check_probe(model, parts, (size, size) if size else probe_size(model))
        self.family = parts.family
        self.blackbox = BlackBoxNet.of(parts.backbone, parts.head)
        self.k, self.seed = prototypes_per_class, seed
        self.batches = batches or BatchSettings()
        self.nmf = nmf or NMFSettings()
        self.refinement = refinement or RefinementSettings()
        self.projection_settings = projection or ProjectionSettings()
        self.network: PostHocNetwork | None = None

    # ---- fit ------------------------------------------------------------------------------------

    def _loader(self, data: Any) -> DataLoader:
        """The loader to fit from: a DataLoader read in order, or a datamodule's push/train loader
        (its image size, mean and std checked against the model's declaration first)."""
        if isinstance(data, DataLoader):
            return sequential_loader(data)
        if hasattr(data, "setup") and hasattr(data, "train_dataloader"):
            given = Preprocessing(
                getattr(data, "image_size", None),
                getattr(data, "mean", None),
                getattr(data, "std", None),
            )
            if self.check_preprocessing:
                require_preprocessing(self.declared, given, "the datamodule's")
            self.preprocessing = Preprocessing(
                given.image_size or self.preprocessing.image_size,
                given.mean or self.preprocessing.mean,
                given.std or self.preprocessing.std,
            )
            data.setup("fit")
            loader = data.push_dataloader() if hasattr(data, "push_dataloader") else None
            return sequential_loader(loader or data.train_dataloader())
        raise TypeError(
            f"fit takes a DataLoader or a LightningDataModule, got a {type(data).__name__}"
        )

    def fit(self, data: DataLoader | Any, spill_dir: str | Path | None = None) -> PostHocPPN:
        """Discover, refine and project the prototypes of every class from training data.

        The classes are read and decomposed a batch of consecutive classes at a time, each batch's
        features resident on the model's device (`batches.max_batch_gb` at most) and released
        afterwards; nothing is written to disk.

        Args:
            data: a `DataLoader` of (images, labels) tuples or dict batches (shuffled ones are read
                in order), or a `LightningDataModule` (its push/train split).
            spill_dir: read every feature into a memory-mapped store in this folder first, then
                decompose from it (for hosts short of memory; the file is removed afterwards).

        Returns:
            self, fitted: `self.network` holds the prototypes and their nearest training patches.

        Example:
            >>> # ppn = PostHocPPN(model, prototypes_per_class=3).fit(train_loader)
        """
        loader = self._loader(data)
        device = model_device(self.blackbox)
        V = self.blackbox.head.weight.detach().cpu()
        steps = StreamSteps(
            self.k, self.nmf, self.refinement, self.projection_settings, seed=self.seed
        )
        with tempfile.TemporaryDirectory() as scratch:
            try:
                batches = self._batches(loader, V.shape[0], device, spill_dir, Path(scratch))
                result = decompose_stream(batches, V, steps)
            finally:
                if spill_dir is not None:  # the store is scratch, not a result
                    (Path(spill_dir) / SPILL_FILE).unlink(missing_ok=True)
        decomposition = result.decomposition
        found = result.projection
        if result.index is not None:  # unrestricted: every patch of every class was indexed
            found = result.index.search(decomposition.prototypes.flatten(0, 1))
        self.network = self._network(decomposition, found, result.map_size, loader.dataset, device)
        log.info(
            "fitted %d x %d prototypes: relative head error %.3g",
            *decomposition.prototypes.shape[:2],
            self.network.relative_head_error(),
        )
        return self

    def _batches(
        self, loader: DataLoader, num_classes: int, device, spill_dir, scratch: Path
    ) -> Iterator[ClassBatch]:
        """The class batches to decompose: read from the loader's images one batch of classes at
        a time, or from a store (memory-mapped in `spill_dir`, or in RAM when the dataset does not
        tell its labels before the pass)."""
        features = self.blackbox.features
        labels = dataset_labels(loader.dataset)
        if labels is None:  # every patch first, laid out by class at the end
            store = collect_features(
                features, dict_batches(loader), None, num_classes, 0.0, scratch, device
            )
            hw = store.map_size[0] * store.map_size[1]
            labels = store.labels[::hw]
            elements = hw * store.features.shape[1]
            plan = BatchPlan.of(
                labels, num_classes, elements, self.nmf.classes_per_batch, self.batches
            )
            return (ClassBatch.of_store(store, classes, device) for classes in plan.mine)
        require_labels_below(labels, num_classes)
        elements = feature_elements(features, image_of(loader.dataset, 0), device)
        plan = BatchPlan.of(labels, num_classes, elements, self.nmf.classes_per_batch, self.batches)
        spill = Path(spill_dir) if spill_dir is not None else None
        plan.check(device, self.batches, spill)
        return planned_batches(
            features,
            lambda classes: class_loader(loader, labels, classes),
            labels,
            plan,
            device,
            spill,
        )

    def _network(self, decomposition, found, map_size, dataset, device) -> PostHocNetwork:
        """The fitted network, with the boxes and image paths of its nearest patches."""
        image_size = self.preprocessing.image_size or int(
            image_of(dataset, int(found.rows[0])).shape[-1]
        )
        boxes = posthoc_boxes(
            self.blackbox.features,
            found,
            decomposition.prototypes,
            dataset,
            image_size,
            self.projection_settings.high_activation_percentile,
            device,
        )
        paths = [image_path(dataset, int(row)) for row in found.rows]
        preprocessing = Preprocessing(image_size, self.preprocessing.mean, self.preprocessing.std)
        extras = network_extras(
            decomposition,
            boxes,
            map_size,
            preprocessing.as_dict(),
            class_names=getattr(dataset, "classes", None),
            nearest_paths=paths if any(p is not None for p in paths) else None,
        )
        bias = self.blackbox.head.bias.detach().cpu()
        return PostHocNetwork(self.blackbox, decomposition.prototypes, bias, found, extras)

    # ---- use ------------------------------------------------------------------------------------

    @property
    def fitted(self) -> PostHocNetwork:
        """The fitted network (raises `NotFittedError` before `fit` or `load`)."""
        if self.network is None:
            raise NotFittedError(
                "call fit(train_loader) first, or PostHocPPN.load(path, model=...)"
            )
        return self.network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) or one image (3, H, W) -> logits (B, C), equal to the model's."""
        return self.fitted(images)

    def explain(self, images: torch.Tensor, target: torch.Tensor | int | None = None) -> list:
        """Per image, the explained class's prototype terms, ranked (`PostHocNetwork.explain`).

        Args:
            images: images (B, 3, H, W) or one image (3, H, W), normalised as the model expects.
            target: the class to explain, one per image or one for all; None: the predicted class.

        Returns:
            One `PrototypeExplanation` per image: its `label`, the prototypes' `contributions`
            (ranked; they sum with the head's bias to the class's logit), their `heatmaps` and
            `upsampled` maps, `against` (negative terms) and `terms()` as text.

        Example:
            >>> # e = ppn.explain(image)[0]; e.contributions.sum() + bias == logit of e.label
            >>> # e.terms() -> ['p2: +0.31 for', 'p0: -0.12 against']
        """
        return self.fitted.explain(images, target)

    def heatmaps(self, images: torch.Tensor, targets: torch.Tensor | int) -> torch.Tensor:
        """The targets' class heatmaps at the input size (`PostHocNetwork.heatmaps`): the sum of the
        class's prototype maps, which equals its class activation map.

        Args:
            images: images (B, 3, H, W).
            targets: the class of each image (B,), or one class for all.

        Returns:
            Heatmaps (B, H, W), the explainer interface every method answers.

        Example:
            >>> # ppn.heatmaps(images, 3).shape == images.shape[:1] + images.shape[2:]
        """
        return self.fitted.heatmaps(images, targets)

    def relative_head_error(self) -> float:
        """||V - sum_i p~_i||_F / ||V||_F: 0 to float precision (below 1e-6 in float32)."""
        return self.fitted.relative_head_error()

    @property
    def prototypes(self) -> torch.Tensor:
        """The refined prototypes (C, k, D); they sum over k to the head's rows."""
        return self.fitted.prototypes

    # ---- files ----------------------------------------------------------------------------------

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the fitted network as one artifact of tensors and plain values, atomically.

        Args:
            path: the file to write (e.g. `posthoc.pt`); read back with `PostHocPPN.load`.
            metadata: plain values to keep with it (a dataset name, a note).

        Returns:
            The path written. The file loads with `torch.load(weights_only=True)`.

        Example:
            >>> # ppn.save("posthoc.pt", metadata={"data": "birds"})
        """
        metadata = {"family": self.family, "made_by": "PostHocPPN", **(metadata or {})}
        return self.fitted.save(path, metadata)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: nn.Module,
        features: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        head: nn.Linear | None = None,
    ) -> PostHocPPN:
        """Restore a saved network onto `model`, checked to be the one it was made from (its head
        weights and a probe fingerprint of its body).

        Args:
            path: a file `save` wrote.
            model: the classifier it was made from (shared, never copied or changed).
            features: as given to the constructor, for a model split by hand.
            head: likewise.

        Returns:
            The fitted `PostHocPPN`; a file of another model is refused with the reason.

        Example:
            >>> # ppn.save("posthoc.pt"); ppn = PostHocPPN.load("posthoc.pt", model=model)
        """
        ppn = cls(model, features=features, head=head, check_preprocessing=False)
        ppn.network = PostHocNetwork.load(path, blackbox=ppn.blackbox)
        ppn.k = ppn.network.prototypes_per_class
        extras = ppn.network.extras
        ppn.preprocessing = Preprocessing(
            extras.get("image_size"),
            *(tuple(extras[k]) if extras.get(k) is not None else None for k in ("mean", "std")),
        )
        return ppn


__all__ = ["NotFittedError", "PostHocPPN", "Preprocessing", "PreprocessingMismatchError"]
