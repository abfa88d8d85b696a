"""Paper experiment configs: each composes for every stage and trains one step on a random stand-in of its shapes."""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.data import DataLoader

from proto_lightning.config import CONF_DIR, compose_config


class HeadBeforeStep(L.Callback):
    """The head's weight, gradient and learning rate just before the optimizer step."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        head = pl_module.net.head.weight
        self.weight, self.grad = head.detach().clone(), head.grad.detach().clone()
        self.lr = next(
            g["lr"] for g in optimizer.param_groups if any(p is head for p in g["params"])
        )


PAPER = sorted(
    p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml") if p.stem != "quickstart"
)
CLASSES = {"cub": 200, "cars": 196, "dogs": 120}  # CUB-200-2011, Stanford Cars, Stanford Dogs


def test_the_paper_settings_are_all_there():
    assert PAPER == [
        "cars_resnet50",
        "cub_densenet121",
        "cub_densenet161",
        "cub_resnet152",
        "cub_resnet34",
        "cub_resnet50",
        "cub_vgg19",
        "dogs_resnet50",
    ]


@pytest.mark.parametrize("experiment", PAPER)
def test_experiment_composes_and_takes_one_step(experiment: str):
    extra = ["blackbox_ckpt=x.ckpt"]
    for stage in ("blackbox", "decompose", "protopnet", "evaluate"):
        cfg = compose_config(
            stage, [f"experiment={experiment}", *(extra if stage == "decompose" else [])]
        )
        assert cfg.data.image_size == 224 and cfg.trainer.accelerator == "gpu"
        assert cfg.data.get("crop_to_bbox", False) == experiment.startswith("cub")
    cfg = compose_config("blackbox", [f"experiment={experiment}", "model.backbone.weights=null"])
    with open_dict(cfg):
        cfg.model.num_classes = CLASSES[experiment.split("_")[0]]
    model = instantiate(cfg.model, _convert_="all")  # the configured backbone, random weights
    assert model.net.backbone.name == experiment.split("_")[1]
    # the step is taken on 64 px stand-ins: what it checks (the configured model steps, AdamW's first
    # step by hand) does not depend on the size (module: 38 s at 224 px, 23 s at 64 px, 2 cores)
    size, classes = 64, cfg.model.num_classes
    stand_in = [
        {"image": torch.randn(3, size, size), "label": int(torch.randint(0, classes, ()))}
        for _ in range(2)
    ]
    loader = DataLoader(stand_in, batch_size=2)
    spy = HeadBeforeStep()
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=1,  # one training step and one validation step
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[spy],
    )
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    # AdamW's first step, by hand: m^ = g, v^ = g^2, so w <- w (1 - lr wd) - lr g / (|g| + eps)
    optimizer = cfg.model.optimizer
    assert optimizer.name == "adamw" and cfg.model.scheduler.warmup_epochs == 0
    assert spy.lr == optimizer.lr  # the head's group, no warm-up
    w, g = spy.weight, spy.grad
    expected = w * (1 - optimizer.lr * optimizer.weight_decay) - optimizer.lr * g / (g.abs() + 1e-8)
    assert torch.allclose(model.net.head.weight, expected, atol=1e-7)
