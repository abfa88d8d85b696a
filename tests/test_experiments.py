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


EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
# fine-tuned black boxes of the paper's tables; ImageNet decomposes a pretrained classifier as is
PAPER = [e for e in EXPERIMENTS if e != "quickstart" and not e.startswith("imagenet")]
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


@pytest.mark.parametrize("experiment", ["imagenet_resnet50", "imagenet_vit_b16_avg"])
def test_imagenet_experiments_compose_for_8_gpus_without_part_metrics(experiment: str):
    model = {"imagenet_resnet50": "resnet50", "imagenet_vit_b16_avg": "vit_base_patch16_rpn_224"}
    decompose = compose_config(
        "decompose",
        [f"experiment={experiment}", f"blackbox={model[experiment]}", "blackbox_weights=w.pt"],
    )
    assert decompose.data._target_.endswith("ImageFolderDataModule")
    assert decompose.trainer.devices == 8 and decompose.data.val_fraction == 0.0
    evaluate = compose_config("evaluate", [f"experiment={experiment}", "from_run=r"])
    assert list(evaluate.evaluation.methods) == ["posthoc", "gradcam"]
    assert evaluate.evaluation.faithfulness.steps == 224


@pytest.mark.slow
def test_the_imagenet_experiment_runs_on_class_folders(tmp_path: Path):
    """imagenet_resnet50 end to end on 3 class folders at 32 px, one CPU process, a ResNet-18 state
    dict as the user's classifier: decompose, then evaluate without part keypoints."""
    import csv

    import numpy as np
    import torchvision
    from PIL import Image

    from tests.helpers import run_cli

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for name in ("n01", "n02", "n03"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / name / f"{i}.JPEG")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")
    small = [
        "experiment=imagenet_resnet50",
        f"data.root={tmp_path / 'data'}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "trainer=cpu",
        "trainer.devices=1",  # the experiment's 8, here one process
        "logger=csv",
        "callbacks.progress=null",
    ]
    run = tmp_path / "dec"
    run_cli(
        "decompose",
        *small,
        "blackbox=resnet18",
        f"blackbox_weights={tmp_path / 'r18.pt'}",
        "model.nmf.max_iter=10",
        f"hydra.run.dir={run}",
    )
    artifact = torch.load(run / "posthoc.pt", weights_only=True)
    assert artifact["prototypes"].shape == (3, 3, 512)
    assert artifact["extras"]["class_names"] == ["n01", "n02", "n03"]
    run_cli(
        "evaluate",
        *small,
        f"blackbox_ckpt={run / 'blackbox.ckpt'}",
        f"posthoc={run / 'posthoc.pt'}",
        "evaluation.faithfulness.images=2",
        "evaluation.faithfulness.steps=4",
        "evaluation.bootstrap.resamples=20",
        "evaluation.figures.images=1",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    with (tmp_path / "eval" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["black box", "Post-hoc PPN", "Grad-CAM"]
    assert all(float(r["deletion_auc"]) >= 0 for r in rows if r["deletion_auc"])
