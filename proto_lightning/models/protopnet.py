"""ProtoPNet (Chen et al., NeurIPS 2019), following the official code (cfchen-duke/ProtoPNet, model.py).

backbone -> add-on 1x1 convs (ReLU ..., final Sigmoid) -> squared L2 distance of every patch to m
prototypes (m/C per class, 1x1) by the official expansion ||x||^2 - 2 x.p + ||p||^2 as convolutions
-> global min over locations -> similarity log((d + 1) / (d + eps)) -> last layer (no bias,
+1 own class, -0.5 others). Trained with the official schedule (`protopnet_schedule.py`), three Adam
optimizers (warm, joint with StepLR, last layer) and the official losses (`protopnet_losses.py`).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from proto_lightning.distributed import gather_objects, rank_and_world
from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.models.backbones import build_backbone
from proto_lightning.models.blackbox import BlackBoxClassifier
from proto_lightning.models.files import (
    checkpoint_hyperparameters,
    read_torch_file,
    require_kind,
)
from proto_lightning.models.protopnet_losses import cluster_cost, last_layer_l1, separation_cost
from proto_lightning.models.protopnet_schedule import ProtoPNetSchedule, Step
from proto_lightning.prototypes.boxes import projected_boxes
from proto_lightning.prototypes.network import (
    PrototypeExplanation,
    nearest_patch,
    ranked_explanations,
)
from proto_lightning.prototypes.projection import NearestPatchIndex, Projection, all_reduce_nearest
from proto_lightning.settings import checked_settings

log = logging.getLogger(__name__)

ADD_ON_TYPES = ("regular", "bottleneck")


def add_on_layers(in_channels: int, out_channels: int, kind: str) -> nn.Sequential:
    """Official add-on layers: `regular` (conv-ReLU-conv-Sigmoid) or `bottleneck` (halving until out_channels)."""
    if kind == "regular":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1),
            nn.Sigmoid(),
        )
    if kind != "bottleneck":
        raise ValueError(f"add_on must be one of {ADD_ON_TYPES}, got {kind!r}")
    layers: list[nn.Module] = []
    current = in_channels
    while current > out_channels or not layers:
        nxt = max(out_channels, current // 2)
        layers += [nn.Conv2d(current, nxt, 1), nn.ReLU(), nn.Conv2d(nxt, nxt, 1)]
        layers.append(nn.ReLU() if nxt > out_channels else nn.Sigmoid())
        current = current // 2
    return nn.Sequential(*layers)


class ProtoPNetNet(nn.Module):
    """The ProtoPNet network; `forward` returns logits (B, C) and min_distances (B, m)."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        weights: str | None = None,
        prototypes_per_class: int = 10,
        prototype_dim: int = 128,
        add_on: str = "regular",
        epsilon: float = 1e-4,
        incorrect_class_connection: float = -0.5,
        library: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, weights, library, backbone_kwargs)
        self.add_on = add_on_layers(self.backbone.out_channels, prototype_dim, add_on)
        m = num_classes * prototypes_per_class
        self.num_classes, self.prototypes_per_class, self.epsilon = (
            num_classes,
            prototypes_per_class,
            epsilon,
        )
        self.prototype_vectors = nn.Parameter(
            torch.rand(m, prototype_dim, 1, 1)
        )  # official: U[0, 1)
        self.register_buffer("ones", torch.ones(m, prototype_dim, 1, 1))
        identity = torch.zeros(m, num_classes)
        identity[torch.arange(m), torch.arange(m) // prototypes_per_class] = 1
        self.register_buffer("class_identity", identity)  # (m, C) one-hot
        self.last_layer = nn.Linear(m, num_classes, bias=False)
        for module in self.add_on.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        self.last_layer.weight.data.copy_(
            identity.T + incorrect_class_connection * (1 - identity.T)
        )

    @property
    def max_dist(self) -> float:
        """Largest possible distance of sigmoid features to prototypes in [0, 1] (official max_dist)."""
        return float(self.prototype_vectors[0].numel())

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> add-on features (B, d, H, W) in (0, 1)."""
        return self.add_on(self.backbone.features(x))

    def l2_distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance of every patch to every prototype (B, m, H, W), official expansion.

        Summed in the official order, x2 + (-2 xp + p2) (cfchen-duke/ProtoPNet model.py
        `_l2_convolution`): after a push d is about 0, where the other order moves d by ~2e-6 and the
        log-similarity log((d + 1)/(d + eps)) magnifies that to ~1e-4. Always float32, autocast or
        not: in fp16/bf16 the expansion cancels to errors of ~0.06 near d = 0.
        """
        with torch.autocast(z.device.type, enabled=False):
            z, prototypes = z.float(), self.prototype_vectors.float()
            x2 = F.conv2d(z * z, self.ones.float())  # (B, m, H, W) sum_d z^2
            p2 = (prototypes**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)  # (m, 1, 1)
            xp = F.conv2d(z, prototypes)  # (B, m, H, W)
            return F.relu(x2 + (-2 * xp + p2))

    def similarity(self, distances: torch.Tensor) -> torch.Tensor:
        """Official log activation log((d + 1) / (d + eps))."""
        return torch.log((distances + 1) / (distances + self.epsilon))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H0, W0) -> logits (B, C), min_distances (B, m)."""
        distances = self.l2_distances(self.conv_features(x))
        min_distances = distances.flatten(2).min(dim=2).values  # global min pooling
        return self.last_layer(self.similarity(min_distances)), min_distances

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The official parameter groups: features, add_on_layers, prototype_vectors, last_layer."""
        return {
            "features": list(self.backbone.parameters()),
            "add_on_layers": list(self.add_on.parameters()),
            "prototype_vectors": [self.prototype_vectors],
            "last_layer": list(self.last_layer.parameters()),
        }


# official warm_only / joint / last_only (train_and_test.py): which groups require gradients
TRAINABLE = {
    "warm": {
        "features": False,
        "add_on_layers": True,
        "prototype_vectors": True,
        "last_layer": True,
    },
    "joint": {
        "features": True,
        "add_on_layers": True,
        "prototype_vectors": True,
        "last_layer": True,
    },
    "last": {
        "features": False,
        "add_on_layers": False,
        "prototype_vectors": False,
        "last_layer": True,
    },
}
OPTIMIZER_INDEX = {"warm": 0, "joint": 1, "last": 2}
# Library defaults (the official settings.py); conf/model/protopnet.yaml sets the run's.
LOSS_DEFAULTS = {"cross_entropy": 1.0, "cluster": 0.8, "separation": -0.08, "l1": 1e-4}
OPTIMIZER_DEFAULTS = {
    "warm": {"add_on_layers": 3e-3, "prototype_vectors": 3e-3},
    "joint": {"features": 1e-4, "add_on_layers": 3e-3, "prototype_vectors": 3e-3},
    "last_layer": 1e-4,
    "weight_decay": 1e-3,  # features and add-on layers
    "joint_lr_step_size": 5,
    "joint_lr_gamma": 0.1,
}
PUSH_DEFAULTS = {
    "metric": "l2",
    "device": "auto",
    "high_activation_percentile": 95.0,
    "log_test_accuracy": True,
}


class ProtoPNet(L.LightningModule):
    """ProtoPNet trained with the official schedule, one Lightning epoch per plan step, manual optimization."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        num_classes: int,
        prototypes_per_class: int = 10,
        prototype_dim: int = 128,
        add_on: str = "regular",
        epsilon: float = 1e-4,
        incorrect_class_connection: float = -0.5,
        loss: Mapping[str, float] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        schedule: Mapping[str, Any] | None = None,
        push: Mapping[str, Any] | None = None,
        init_from_blackbox: str | None = None,
        trust_file: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["trust_file"])  # how a file is read is not the model
        backbone = dict(backbone)
        self.net = ProtoPNetNet(
            backbone["name"],
            num_classes,
            backbone.get("weights"),
            prototypes_per_class,
            prototype_dim,
            add_on,
            epsilon,
            incorrect_class_connection,
            backbone.get("library"),
            backbone.get("kwargs"),
        )
        if init_from_blackbox is not None:
            self.init_backbone_from(init_from_blackbox, trust_file)
        self.loss_weights = checked_settings(loss, LOSS_DEFAULTS, "model.loss")
        self.optimizer_settings = checked_settings(optimizer, OPTIMIZER_DEFAULTS, "model.optimizer")
        self.schedule = ProtoPNetSchedule(**dict(schedule or {}))
        self.push_settings = checked_settings(push, PUSH_DEFAULTS, "model.push")
        self.plan = self.schedule.plan()
        self.projection: Projection | None = None
        self.extras: dict[str, Any] = {}
        self.automatic_optimization = False
        self.metrics = nn.ModuleDict(
            {
                f"{s}_acc": MulticlassAccuracy(num_classes, average="micro")
                for s in ("train", "val", "test")
            }
        )

    def init_backbone_from(self, blackbox_ckpt: str | Path, trust_file: bool = False) -> None:
        """Start the backbone from a trained black box's, as the official code starts from pretrained weights."""
        source = BlackBoxClassifier.load_checkpoint(
            blackbox_ckpt, trust_file=trust_file
        ).net.backbone
        if source.name != self.net.backbone.name:
            raise IncompatibleWeightsError(
                f"model.init_from_blackbox={blackbox_ckpt} has backbone {source.name!r}, this ProtoPNet "
                f"{self.net.backbone.name!r}: choose the same model/backbone"
            )
        self.net.backbone.load_state_dict(source.state_dict())
        log.info("ProtoPNet backbone initialised from the black box %s", blackbox_ckpt)

    # ---- the PrototypeNetwork interface (prototypes/network.py) the gallery and evaluation use --
    @property
    def num_classes(self) -> int:
        """C."""
        return self.net.num_classes

    @property
    def prototypes_per_class(self) -> int:
        """Prototypes per class."""
        return self.net.prototypes_per_class

    def nearest_patch(self, label: int, i: int) -> dict[str, Any]:
        """The training patch prototype i of class `label` was pushed onto (empty before a push)."""
        return nearest_patch(self, label, i)

    @torch.no_grad()
    def explain(
        self, x: torch.Tensor, target: torch.Tensor | int | None = None
    ) -> list[PrototypeExplanation]:
        """Per image, the predicted (or target) class c's own prototypes j: contribution w_cj max sim_j,
        similarity map sim_j (h, w) and its bicubic upsampling (as the official local analysis).

        Args:
            x: normalised images (B, 3, H, W) or one image (3, H, W).
            target: the class to explain, per image or one for all; None: the predicted class.

        Returns:
            One `PrototypeExplanation` per image, its terms ranked by contribution.

        Example:
            >>> # ProtoPNet.load_checkpoint("last.ckpt").explain(image)[0].terms()
        """
        similarity = self.net.similarity(self.net.l2_distances(self.net.conv_features(x)))
        logits = self.net.last_layer(similarity.flatten(2).max(2).values)  # (B, C), = forward
        labels = (
            logits.argmax(1)
            if target is None
            else torch.as_tensor(target, device=x.device).expand(len(x))
        )
        k = self.prototypes_per_class
        own = labels[:, None] * k + torch.arange(k, device=x.device)  # (B, k) prototype indices
        maps = similarity.gather(1, own[:, :, None, None].expand(-1, -1, *similarity.shape[-2:]))
        weights = self.net.last_layer.weight[labels[:, None], own]  # (B, k) w_cj
        contributions = weights * maps.flatten(2).max(2).values  # (B, k)
        upsampled = F.interpolate(maps, size=x.shape[-2:], mode="bicubic", align_corners=False)
        return ranked_explanations(self, labels, logits, contributions, maps, upsampled)

    # ---- schedule ---------------------------------------------------------------------------------
    def step_of_epoch(self, epoch: int) -> Step:
        """The plan step of a Lightning epoch."""
        if epoch >= len(self.plan):
            raise IndexError(f"epoch {epoch} is past the schedule's {len(self.plan)} epochs")
        return self.plan[epoch]

    def set_phase(self, phase: str) -> None:
        """Freeze / unfreeze the official parameter groups of a phase (warm_only, joint, last_only)."""
        for group, params in self.net.parameter_groups().items():
            for p in params:
                p.requires_grad_(TRAINABLE[phase][group])

    def on_train_epoch_start(self) -> None:
        """Enter the epoch's phase; push first if the plan says so; step the joint LR schedule as the official loop."""
        step = self.step_of_epoch(self.current_epoch)
        if step.push:
            self.push()
        self.set_phase(step.phase)
        if step.phase == "joint":
            # the official order (step before the epoch's optimizer steps) is intended
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=re.escape("Detected call of `lr_scheduler.step()`")
                )
                self.lr_schedulers().step()  # official: joint_lr_scheduler.step() before each joint epoch
        self.log("phase", float(OPTIMIZER_INDEX[step.phase]), on_epoch=True)

    # ---- training -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> logits (B, C)."""
        return self.net(x)[0]

    def losses(
        self, logits: torch.Tensor, min_distances: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The official terms and their weighted sum."""
        identity = self.net.class_identity
        terms = {
            "cross_entropy": F.cross_entropy(logits, labels),
            "cluster": cluster_cost(min_distances, labels, identity, self.net.max_dist),
            "separation": separation_cost(min_distances, labels, identity, self.net.max_dist),
            "l1": last_layer_l1(self.net.last_layer.weight, identity),
        }
        terms["loss"] = sum(self.loss_weights[k] * v for k, v in terms.items())
        return terms

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One step of the current phase's optimizer."""
        step = self.step_of_epoch(self.current_epoch)
        optimizer = self.optimizers()[OPTIMIZER_INDEX[step.phase]]
        logits, min_distances = self.net(batch["image"])
        terms = self.losses(logits, min_distances, batch["label"])
        optimizer.zero_grad()
        self.manual_backward(terms["loss"])
        optimizer.step()
        n = len(batch["label"])
        self.metrics["train_acc"](logits, batch["label"])
        self.log("train/acc", self.metrics["train_acc"], on_step=False, on_epoch=True, batch_size=n)
        for name, value in terms.items():
            self.log(
                f"train/{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True
            )
        return terms["loss"]

    def _eval(self, batch: Mapping[str, torch.Tensor], split: str) -> None:
        logits = self(batch["image"])
        self.metrics[f"{split}_acc"](logits, batch["label"])
        self.log(
            f"{split}/acc",
            self.metrics[f"{split}_acc"],
            batch_size=len(batch["label"]),
            prog_bar=True,
        )

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Validation accuracy."""
        self._eval(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Test accuracy."""
        self._eval(batch, "test")

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        """The official optimizers: warm (add-on, prototypes), joint (+ features, StepLR), last layer."""
        o = self.optimizer_settings
        groups = self.net.parameter_groups()
        decay = {
            "features": o["weight_decay"],
            "add_on_layers": o["weight_decay"],
            "prototype_vectors": 0.0,
        }

        def adam(lrs: Mapping[str, float]) -> torch.optim.Adam:
            return torch.optim.Adam(
                [{"params": groups[g], "lr": lr, "weight_decay": decay[g]} for g, lr in lrs.items()]
            )

        warm, joint = adam(o["warm"]), adam(o["joint"])
        last = torch.optim.Adam([{"params": groups["last_layer"], "lr": o["last_layer"]}])
        step_lr = torch.optim.lr_scheduler.StepLR(
            joint, step_size=o["joint_lr_step_size"], gamma=o["joint_lr_gamma"]
        )
        return [warm, joint, last], [step_lr]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another backbone / class count / prototype layout; restore push results."""
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("num_classes", "prototypes_per_class", "prototype_dim"):
            if saved.get(key) != self.hparams[key]:
                raise IncompatibleWeightsError(
                    f"checkpoint has {key}={saved.get(key)!r}, this model {self.hparams[key]!r}"
                )
        if saved.get("backbone", {}).get("name") != self.hparams.backbone["name"]:
            raise IncompatibleWeightsError(
                f"checkpoint has backbone={saved.get('backbone', {}).get('name')!r}, this model {self.hparams.backbone['name']!r}"
            )
        push = checkpoint.get("protopnet_push")
        if push is not None:
            self.projection = Projection.from_dict(push["projection"])
            self.extras = push["extras"]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the last push's projection and boxes with the weights."""
        if self.projection is not None:
            checkpoint["protopnet_push"] = {
                "projection": self.projection.to_dict(),
                "extras": self.extras,
            }

    @classmethod
    def load_checkpoint(
        cls, path: str | Path, map_location: str = "cpu", trust_file: bool = False
    ) -> ProtoPNet:
        """Load a ProtoPNet checkpoint (weights and last push) with a clear error for a missing or
        foreign file.

        Args:
            path: a checkpoint of the `protopnet` stage (`last.ckpt`).
            map_location: where the tensors go.
            trust_file: unpickle any object (runs code): only for a file you made yourself; by
                default the file is read as data (`weights_only=True`).

        Returns:
            The `ProtoPNet` module, with its last push's projection.

        Example:
            >>> # net = ProtoPNet.load_checkpoint("runs/protopnet/<date>/checkpoints/last.ckpt")
        """
        checkpoint = read_torch_file(
            path,
            "ProtoPNet checkpoint",
            "train one with `proto-lightning protopnet`",
            map_location=map_location,
            trust_file=trust_file,
        )
        require_kind(checkpoint, "ProtoPNet checkpoint", path)
        required = {"num_classes", "prototypes_per_class", "prototype_dim"}
        params = checkpoint_hyperparameters(checkpoint, required, path, "ProtoPNet")
        model = cls(**{**params, "init_from_blackbox": None})  # the weights come from the file
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()

    # ---- push -----------------------------------------------------------------------------------
    @torch.no_grad()
    def accuracy_on(self, loader) -> float:
        """Eval-mode accuracy over a loader (used around a push); the module's mode is restored, and
        BatchNorm statistics never see the loader's images."""
        was_training = self.training
        self.eval()
        correct = total = 0
        for batch in loader:
            logits = self(batch["image"].to(self.device))
            correct += int((logits.argmax(1).cpu() == batch["label"]).sum())
            total += len(batch["label"])
        self.train(was_training)
        return correct / max(1, total)

    @torch.no_grad()
    def push(self, datamodule=None) -> Projection:
        """Replace each prototype by its nearest push-split patch of its own class (official push.py),
        with the shared FAISS projection module; record rows, locations and both boxes.

        As in the official loop, the last-layer passes after a push run in train mode, so BatchNorm
        statistics of the frozen backbone still move and features drift slightly from the pushed
        prototypes; the push itself is exact (features in eval mode).
        """
        attached = self._trainer is not None
        datamodule = datamodule or self.trainer.datamodule
        if attached:
            self._notify_push("on_push_start")
        was_training = self.training
        self.eval()
        log_accuracy = self.push_settings["log_test_accuracy"] and attached
        before = self.accuracy_on(datamodule.test_dataloader()) if log_accuracy else None
        prototypes = self.net.prototype_vectors  # (m, d, 1, 1)
        index = NearestPatchIndex(
            prototypes.shape[1],
            metric=self.push_settings["metric"],
            device=self.push_settings["device"],
            gpu=self.device.index if self.device.type == "cuda" else None,
        )
        # under DDP each rank searches a contiguous share of the classes once; the min-reduce
        # gives every rank the same winners and vectors (no rank pushes on its own)
        rank, world = rank_and_world()
        shard = np.array_split(np.arange(self.net.num_classes), world)[rank].tolist()
        for batch in datamodule.push_dataloader(shard if world > 1 else None):
            z = self.net.conv_features(batch["image"].to(self.device))  # (B, d, H, W)
            B, d, H, W = z.shape
            patches = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B H W, d)
            hw = np.stack(np.divmod(np.arange(H * W), W), 1)
            index.add(
                patches,
                np.repeat(batch["label"].numpy(), H * W),
                np.repeat(batch["row"].numpy(), H * W),
                np.repeat(batch["image_id"].numpy(), H * W),
                np.tile(hw, (B, 1)),
            )
        classes = self.net.class_identity.argmax(1).cpu().numpy()  # (m,)
        found = all_reduce_nearest(
            index.search(prototypes.flatten(1), classes, return_vectors=True)
        )
        self.net.prototype_vectors.data.copy_(torch.from_numpy(found.vectors).view_as(prototypes))
        self.projection = found
        self.extras.update(self._boxes(found, datamodule, rank, world))
        self.train(was_training)
        if before is not None:
            after = self.accuracy_on(datamodule.test_dataloader())
            self.log_dict({"push/test_acc_before": before, "push/test_acc_after": after})
            log.info(
                "push at epoch %d: test accuracy %.4f before, %.4f after",
                self.current_epoch,
                before,
                after,
            )
        if attached:
            self._notify_push("on_push_end")
        return found

    def _notify_push(self, hook: str) -> None:
        """Call `hook` (on_push_start | on_push_end) of the trainer's callbacks that define it."""
        for callback in self.trainer.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self.trainer, self)

    def _boxes(
        self, found: Projection, datamodule, rank: int = 0, world: int = 1
    ) -> dict[str, torch.Tensor]:
        """Receptive-field and high-activation boxes of the pushed patches, as tensors (checkpoints
        hold plain data); under DDP each rank measures a contiguous share, then they are joined."""

        def similarity_maps(images: torch.Tensor) -> torch.Tensor:
            z = self.net.conv_features(images)
            return self.net.similarity(self.net.l2_distances(z))  # (B, m, H, W)

        boxes = projected_boxes(
            self.net.conv_features,
            similarity_maps,
            found,
            datamodule.push_set,
            datamodule.image_size,
            self.push_settings["high_activation_percentile"],
            self.device,
            queries=np.array_split(np.arange(len(found.rows)), world)[rank],
        )
        parts = gather_objects(boxes)
        return {name: torch.from_numpy(np.concatenate([p[name] for p in parts])) for name in boxes}
