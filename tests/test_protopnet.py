"""ProtoPNet against hand computations: distances, losses, push, the official schedule and resume."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from proto_lightning.errors import ConfigValueError, IncompatibleWeightsError
from proto_lightning.models.protopnet import TRAINABLE, ProtoPNet, ProtoPNetNet, add_on_layers
from proto_lightning.models.protopnet_losses import cluster_cost, last_layer_l1, separation_cost
from proto_lightning.models.protopnet_schedule import ProtoPNetSchedule
from proto_lightning.stages.protopnet import run_protopnet
from tests.helpers import KilledRun, assert_drawn, stage_cfg

SHORT = [
    "model.prototypes_per_class=2",
    "model.prototype_dim=16",
    "model.schedule.epochs=4",
    "model.schedule.warm_epochs=1",
    "model.schedule.push_start=2",
    "model.schedule.push_every=2",
    "model.schedule.last_layer_iterations=2",
    "model.schedule.push_at_end=true",
]


def config(parts_root: Path, run_dir: Path, *overrides: str):
    return stage_cfg(
        "protopnet", parts_root, run_dir, *SHORT, "trainer.max_epochs=null", *overrides
    )


def test_distances_equal_squared_cdist():
    torch.manual_seed(0)
    net = ProtoPNetNet("small_cnn", num_classes=3, prototypes_per_class=2, prototype_dim=8)
    z = torch.rand(2, 8, 5, 4)  # add-on features (B, d, H, W)
    d = net.l2_distances(z)  # (B, m, H, W)
    patches = z.permute(0, 2, 3, 1).reshape(2, 20, 8)
    reference = (
        torch.cdist(patches, net.prototype_vectors.flatten(1).expand(2, -1, -1)) ** 2
    )  # (B, HW, m)
    assert torch.allclose(d.flatten(2).transpose(1, 2), reference, atol=1e-5)


def test_forward_is_min_pool_log_similarity_and_identity_last_layer():
    torch.manual_seed(1)
    net = ProtoPNetNet("small_cnn", num_classes=3, prototypes_per_class=2, prototype_dim=8).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, min_d = net(x)
    d = net.l2_distances(net.conv_features(x))
    assert torch.allclose(min_d, d.amin(dim=(2, 3)))
    sim = torch.log((min_d + 1) / (min_d + 1e-4))
    W = torch.tensor(
        [
            [1, 1, -0.5, -0.5, -0.5, -0.5],
            [-0.5, -0.5, 1, 1, -0.5, -0.5],
            [-0.5, -0.5, -0.5, -0.5, 1, 1],
        ]
    )
    assert torch.equal(net.last_layer.weight, W) and net.last_layer.bias is None
    assert torch.allclose(logits, sim @ W.T, atol=1e-5)


def test_bottleneck_add_on_follows_the_official_halving():
    layers = add_on_layers(512, 128, "bottleneck")
    convs = [(m.in_channels, m.out_channels) for m in layers if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(512, 256), (256, 256), (256, 128), (128, 128)]
    assert isinstance(layers[-1], torch.nn.Sigmoid) and isinstance(layers[3], torch.nn.ReLU)
    regular = add_on_layers(512, 128, "regular")
    assert [type(m).__name__ for m in regular] == ["Conv2d", "ReLU", "Conv2d", "Sigmoid"]


def test_losses_equal_their_definitions_in_plain_loops():
    torch.manual_seed(2)
    B, C, k = 5, 3, 2
    m, max_dist = C * k, 4.0
    min_d = torch.rand(B, m) * 5  # some beyond max_dist, where the official trick matters
    labels = torch.tensor([0, 2, 1, 1, 0])
    identity = torch.zeros(m, C)
    identity[torch.arange(m), torch.arange(m) // k] = 1
    clst = sep = 0.0
    for b in range(B):
        y = int(labels[b])
        # official: max over all m of (max_dist - d) * mask, masked-out entries counting as 0
        own = max((max_dist - float(min_d[b, j])) * (j // k == y) for j in range(m))
        other = max((max_dist - float(min_d[b, j])) * (j // k != y) for j in range(m))
        clst += (max_dist - own) / B
        sep += (max_dist - other) / B
    assert cluster_cost(min_d, labels, identity, max_dist).item() == pytest.approx(clst, abs=1e-5)
    assert separation_cost(min_d, labels, identity, max_dist).item() == pytest.approx(sep, abs=1e-5)
    W = torch.randn(C, m)
    l1 = sum(abs(float(W[c, j])) for c in range(C) for j in range(m) if j // k != c)
    assert last_layer_l1(W, identity).item() == pytest.approx(l1, rel=1e-5)


def test_plan_matches_the_official_loop():
    official = ProtoPNetSchedule()  # 1000 epochs, 5 warm, push at 10, 20, ..., 990, 20 iterations
    plan = official.plan()
    assert len(plan) == 1000 + 99 * 20
    assert [s.phase for s in plan[:11]] == ["warm"] * 5 + ["joint"] * 6
    assert [(s.phase, s.epoch, s.push) for s in plan[11:13]] == [
        ("last", 10, True),
        ("last", 10, False),
    ]
    assert plan[31].phase == "joint" and plan[31].epoch == 11
    assert official.push_epochs()[:2] == [10, 20] and official.push_epochs()[-1] == 990


def test_each_phase_trains_exactly_the_official_groups():
    model = ProtoPNet({"name": "small_cnn"}, num_classes=3, prototypes_per_class=2, prototype_dim=8)
    official = {  # train_and_test.py: warm_only, joint, last_only
        "warm": (False, True, True, True),
        "joint": (True, True, True, True),
        "last": (False, False, False, True),
    }
    for phase, expected in official.items():
        model.set_phase(phase)
        groups = model.net.parameter_groups()
        got = tuple(
            all(p.requires_grad for p in groups[g])
            for g in ("features", "add_on_layers", "prototype_vectors", "last_layer")
        )
        assert got == expected, phase
        assert all(
            not any(p.requires_grad for p in groups[g])
            for g, on in TRAINABLE[phase].items()
            if not on
        )
    warm, joint, last = model.configure_optimizers()[0]
    ids = lambda opt: {id(p) for g in opt.param_groups for p in g["params"]}  # noqa: E731
    groups = model.net.parameter_groups()
    assert ids(warm) == {id(p) for g in ("add_on_layers", "prototype_vectors") for p in groups[g]}
    assert ids(joint) == {
        id(p) for g in ("features", "add_on_layers", "prototype_vectors") for p in groups[g]
    }
    assert ids(last) == {id(p) for p in groups["last_layer"]}


def push_patches(model: ProtoPNet, dm) -> tuple[dict, torch.Tensor, tuple[int, int]]:
    """Brute force's input: the whole push set as one batch, its patch vectors (N, H W, d) from
    the model's features in eval mode, and the map size (H, W)."""
    batch = next(iter(torch.utils.data.DataLoader(dm.push_set, batch_size=len(dm.push_set))))
    with torch.no_grad():
        z = model.eval().net.conv_features(batch["image"])  # (N, d, H, W)
    N, d, H, W = z.shape
    return batch, z.permute(0, 2, 3, 1).reshape(N, H * W, d), (H, W)


def test_push_puts_every_prototype_on_its_nearest_own_class_patch(parts_root: Path):
    from proto_lightning.data import CUB200DataModule

    torch.manual_seed(0)
    model = ProtoPNet(
        {"name": "small_cnn"}, num_classes=4, prototypes_per_class=2, prototype_dim=16
    ).eval()
    dm = CUB200DataModule(parts_root, image_size=48, val_fraction=0.25, eval_batch_size=5)
    dm.setup()
    before = model.net.prototype_vectors.detach().flatten(1).clone()
    projection = model.push(dm)
    batch, patches, (H, W) = push_patches(model, dm)
    d = patches.shape[-1]
    classes = model.net.class_identity.argmax(1)
    for j, p in enumerate(model.net.prototype_vectors.detach().flatten(1)):
        own = batch["label"] == classes[j]
        candidates = patches[own].reshape(-1, d)
        assert ((candidates - p) ** 2).sum(1).min() < 1e-10  # it is a patch of its class
        nearest = int(
            ((candidates - before[j]) ** 2).sum(1).argmin()
        )  # nearest to the old prototype
        img, loc = divmod(nearest, H * W)
        assert int(batch["row"][own][img]) == projection.rows[j]
        assert tuple(projection.locations[j]) == divmod(loc, W)
    assert {"rf_boxes", "high_activation_boxes"} <= model.extras.keys()
    assert model.nearest_patch(1, 0)["row"] == projection.rows[2]
    assert model.nearest_patch(1, 1)["location"] == tuple(projection.locations[3])


def test_accuracy_around_a_push_is_measured_in_eval_mode(parts_root: Path):
    """The push runs from a training epoch: the accuracy after it was once measured in train mode,
    with test batches' statistics, which also moved BatchNorm's running statistics to test data."""
    from proto_lightning.data import CUB200DataModule

    torch.manual_seed(0)
    model = ProtoPNet(
        {"name": "small_cnn"}, num_classes=4, prototypes_per_class=2, prototype_dim=16
    )
    dm = CUB200DataModule(parts_root, image_size=48, val_fraction=0.25, eval_batch_size=5)
    dm.setup()
    batch = next(iter(torch.utils.data.DataLoader(dm.test_set, batch_size=len(dm.test_set))))
    model.eval()
    with torch.no_grad():
        expected = (model(batch["image"]).argmax(1) == batch["label"]).float().mean().item()
    model.train()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert model.accuracy_on(dm.test_dataloader()) == pytest.approx(expected)
    assert model.training
    for name, value in model.state_dict().items():
        if name in running:
            assert torch.equal(value, running[name]), name


def test_stage_logs_accuracy_around_push_and_draws_the_gallery(parts_root: Path, tmp_path: Path):
    result = run_protopnet(config(parts_root, tmp_path / "run"))
    assert_drawn(result.run_dir / "gallery" / "prototypes.png")
    assert {
        "push/test_acc_before",
        "push/test_acc_after",
        "test/acc",
        "time/epoch",
    } <= result.metrics.keys()
    saved = (result.run_dir / "config.yaml").read_text()
    assert "max_epochs: 8" in saved  # 4 epochs + 2 pushes x 2 last-layer passes


def test_killed_run_resumes_phase_epoch_and_optimizers(parts_root: Path, tmp_path: Path):
    full = run_protopnet(config(parts_root, tmp_path / "full"))
    reference = torch.load(full.artifacts["last checkpoint"], weights_only=True)
    killed_cfg = config(
        parts_root,
        tmp_path / "killed",
        "+callbacks.kill._target_=tests.helpers.RaiseAtEpoch",
        "+callbacks.kill.epoch=4",
    )
    with pytest.raises(
        KilledRun
    ):  # plan: warm, joint, joint, last(push), last, joint, last(push), last
        run_protopnet(killed_cfg)
    last = Path(killed_cfg.run_dir) / "checkpoints" / "last.ckpt"
    mid = torch.load(last, weights_only=True)
    assert (
        mid["epoch"] == 3 and "protopnet_push" in mid
    )  # in the last-layer phase, after the first push
    resumed = run_protopnet(config(parts_root, tmp_path / "resumed", f"ckpt_path={last}"))
    final = torch.load(resumed.artifacts["last checkpoint"], weights_only=True)
    assert final["epoch"] == reference["epoch"] == 7
    for opt_final, opt_ref in zip(
        final["optimizer_states"], reference["optimizer_states"], strict=True
    ):
        steps = [s["step"] for s in opt_final["state"].values()]
        assert steps == [
            s["step"] for s in opt_ref["state"].values()
        ]  # every optimizer carried its state
    assert final["lr_schedulers"][0]["last_epoch"] == reference["lr_schedulers"][0]["last_epoch"]


def test_checkpoint_of_another_layout_is_refused(parts_root: Path, tmp_path: Path):
    from proto_lightning.errors import IncompatibleWeightsError

    first = run_protopnet(
        config(
            parts_root,
            tmp_path / "a",
            "model.schedule.epochs=1",
            "model.schedule.push_at_end=false",
        )
    )
    with pytest.raises(IncompatibleWeightsError, match="prototypes_per_class"):
        run_protopnet(
            config(
                parts_root,
                tmp_path / "b",
                "model.prototypes_per_class=3",
                f"ckpt_path={first.artifacts['last checkpoint']}",
            )
        )


def test_backbone_starts_from_a_black_box_of_the_same_architecture(tmp_path):
    from proto_lightning.models import BlackBoxClassifier

    torch.manual_seed(3)
    source = BlackBoxClassifier(
        {"name": "small_cnn"}, num_classes=3, optimizer={"name": "adamw", "lr": 1e-3}
    )
    ckpt = tmp_path / "bb.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, ckpt)
    model = ProtoPNet(
        {"name": "small_cnn"},
        num_classes=3,
        prototypes_per_class=2,
        prototype_dim=8,
        init_from_blackbox=str(ckpt),
    )
    for name, value in source.net.backbone.state_dict().items():
        assert torch.equal(model.net.backbone.state_dict()[name], value)
    with pytest.raises(IncompatibleWeightsError, match="same model/backbone"):
        ProtoPNet(
            {"name": "resnet18"},
            num_classes=3,
            prototypes_per_class=2,
            prototype_dim=8,
            init_from_blackbox=str(ckpt),
        )


def test_load_checkpoint_refuses_missing_and_foreign_files(tmp_path):
    from proto_lightning.models import BlackBoxClassifier

    with pytest.raises(FileNotFoundError, match="proto-lightning protopnet"):
        ProtoPNet.load_checkpoint(tmp_path / "none.ckpt")
    source = BlackBoxClassifier(
        {"name": "small_cnn"}, num_classes=3, optimizer={"name": "adamw", "lr": 1e-3}
    )
    foreign = tmp_path / "blackbox.ckpt"
    torch.save(
        {"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, foreign
    )
    with pytest.raises(IncompatibleWeightsError, match="is a black-box checkpoint; a ProtoPNet"):
        ProtoPNet.load_checkpoint(foreign)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(foreign.read_bytes()[:100])
    with pytest.raises(IncompatibleWeightsError, match="cannot read"):
        ProtoPNet.load_checkpoint(truncated)


def test_max_epochs_cuts_the_plan_or_is_refused_naming_the_schedule(parts_root: Path, tmp_path):
    """It used to be overwritten silently: asked for 2 epochs, a run went on to its pushes."""
    cut = run_protopnet(config(parts_root, tmp_path / "cut", "trainer.max_epochs=2"))
    assert cut.metrics["epochs"] == 2.0
    state = torch.load(cut.artifacts["last checkpoint"], weights_only=True)
    assert state["epoch"] == 1  # epochs 0 and 1 of the SHORT plan, nothing after
    with pytest.raises(ConfigValueError, match="model.schedule.epochs"):
        run_protopnet(config(parts_root, tmp_path / "long", "trainer.max_epochs=1000"))


def configured_protopnet(**schedule) -> ProtoPNet:
    """The run's ProtoPNet as conf/model/protopnet.yaml builds it (2 classes, 2 prototypes each, d = 4)."""
    from hydra.utils import instantiate

    from proto_lightning.config import compose_config

    cfg = compose_config(
        "protopnet", ["model.prototypes_per_class=2", "model.prototype_dim=4", "data.root=unused"]
    )
    return instantiate(
        cfg.model, num_classes=2, schedule={**cfg.model.schedule, **schedule}, _convert_="all"
    )


def test_total_loss_is_the_official_weighted_sum_worked_by_hand():
    """settings.py: coefs crs_ent 1, clst 0.8, sep -0.08, l1 1e-4; max_dist = 4 x 1 x 1 here."""
    # prototypes 0, 1 of class 0; 2, 3 of class 1
    min_distances = torch.tensor([[1.0, 3.0, 2.0, 5.0], [6.0, 0.5, 4.0, 2.0]])
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    cross_entropy = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    cluster = (1.0 + 2.0) / 2  # nearest own-class prototype: 1 (image 0), min(4, 2) (image 1)
    separation = (2.0 + 0.5) / 2  # nearest other-class: min(2, 5), min(6, 0.5)
    l1 = 4 * 0.5  # four wrong-class connections at -0.5
    expected = cross_entropy + 0.8 * cluster - 0.08 * separation + 1e-4 * l1
    library = ProtoPNet({"name": "small_cnn"}, 2, prototypes_per_class=2, prototype_dim=4)
    for model in (configured_protopnet(), library):  # the run's settings and the library defaults
        terms = model.losses(logits, min_distances, labels)
        assert terms["cluster"].item() == pytest.approx(cluster)
        assert terms["separation"].item() == pytest.approx(separation)
        assert terms["l1"].item() == pytest.approx(l1)
        assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)


class PhaseRecorder(L.Callback):
    """After every epoch: the joint optimizer's learning rates and each optimizer's Adam step count."""

    def __init__(self) -> None:
        self.joint_lrs: list[list[float]] = []
        self.steps: list[list[int]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.joint_lrs.append([g["lr"] for g in trainer.optimizers[1].param_groups])
        self.steps.append(
            [max((int(s["step"]) for s in o.state.values()), default=0) for o in trainer.optimizers]
        )


def test_learning_rates_and_optimizers_of_each_phase_follow_the_official_loop(monkeypatch):
    """main.py: warm epochs step warm_optimizer; each joint epoch first calls joint_lr_scheduler.step()
    (StepLR) then trains with joint_optimizer, so official epoch e >= warm trains at
    lr x gamma ** ((e - warm + 1) // step_size); the last-layer passes after a push step only
    last_layer_optimizer and leave the joint schedule where it was."""
    torch.manual_seed(0)
    model = configured_protopnet(
        epochs=6, warm_epochs=2, push_start=3, push_every=3, last_layer_iterations=1
    )
    model.optimizer_settings["joint_lr_step_size"] = 2
    pushed = []
    monkeypatch.setattr(model, "push", lambda: pushed.append(model.current_epoch))
    images = [{"image": torch.randn(3, 32, 32), "label": torch.tensor(i % 2)} for i in range(4)]
    recorder = PhaseRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=7,  # warm 0, warm 1, joint 2, joint 3, last 3 (push), joint 4, joint 5
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(images, batch_size=2))
    assert pushed == [4]  # before the first last-layer pass
    base = [1e-4, 3e-3, 3e-3]  # features, add-on layers, prototype vectors
    factors = [1, 1, 1, 0.1, 0.1, 0.1, 0.01]  # official epochs 2..5: (e - 1) // 2 steps of 0.1
    for epoch, factor in enumerate(factors):
        assert recorder.joint_lrs[epoch] == pytest.approx([lr * factor for lr in base]), epoch
    # 2 batches per epoch: (warm, joint, last) optimizers' step counts after each epoch
    assert recorder.steps == [
        [2, 0, 0],
        [4, 0, 0],
        [4, 2, 0],
        [4, 4, 0],
        [4, 4, 2],
        [4, 6, 2],
        [4, 8, 2],
    ]
    warm, joint, last = trainer.optimizers
    assert [g["lr"] for g in warm.param_groups] == [3e-3, 3e-3]
    assert [g["weight_decay"] for g in warm.param_groups] == [1e-3, 0.0]
    assert [g["weight_decay"] for g in joint.param_groups] == [1e-3, 1e-3, 0.0]
    assert [g["lr"] for g in last.param_groups] == [1e-4]


def test_library_defaults_are_the_configured_official_settings():
    """A ProtoPNet built in Python gets what conf/model/protopnet.yaml (checked by hand above) sets."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from proto_lightning.config import compose_config
    from proto_lightning.models.protopnet import LOSS_DEFAULTS, OPTIMIZER_DEFAULTS, PUSH_DEFAULTS

    model = OmegaConf.to_container(compose_config("protopnet", ["data.root=unused"]).model)
    assert model["loss"] == LOSS_DEFAULTS and model["optimizer"] == OPTIMIZER_DEFAULTS
    assert model["push"] == PUSH_DEFAULTS
    assert model["schedule"] == asdict(ProtoPNetSchedule())


def test_push_at_end_and_last_layer_passes():
    """The final epoch is pushed once (never twice when the official pushes already end there); at
    least one last-layer pass follows every push; a step past the plan is refused by name."""
    ends_unpushed = ProtoPNetSchedule(epochs=4, push_start=2, push_every=2, push_at_end=True)
    assert ends_unpushed.push_epochs() == [2, 3]
    ends_pushed = ProtoPNetSchedule(epochs=5, push_start=2, push_every=2, push_at_end=True)
    assert ends_pushed.push_epochs() == [2, 4]
    never = ProtoPNetSchedule(epochs=3, warm_epochs=1, push_start=10, push_at_end=True)
    assert never.push_epochs() == [2]
    assert ProtoPNetSchedule(epochs=3, push_start=10).push_epochs() == []
    zero = ProtoPNetSchedule(
        epochs=2, warm_epochs=1, push_start=1, push_every=1, last_layer_iterations=0
    )
    assert [(s.phase, s.epoch, s.push) for s in zero.plan()] == [
        ("warm", 0, False),
        ("joint", 1, False),
        ("last", 1, True),
    ]
    model = ProtoPNet(
        {"name": "small_cnn"},
        2,
        prototypes_per_class=1,
        prototype_dim=4,
        schedule={"epochs": 2, "push_start": 10},
    )
    assert model.step_of_epoch(1).epoch == 1
    with pytest.raises(IndexError, match="past the schedule"):
        model.step_of_epoch(2)


def test_distances_after_a_push_are_bit_equal_to_the_official_expansion():
    """cfchen-duke/ProtoPNet model.py `_l2_convolution`, transcribed: relu(x2_patch_sum +
    (-2 * xp + p2)), summed in that order. After a push a prototype equals a patch (d about 0),
    where the last bits count: the log-similarity magnifies them."""
    torch.manual_seed(3)
    net = ProtoPNetNet("small_cnn", num_classes=3, prototypes_per_class=4, prototype_dim=16)
    z = torch.rand(2, 16, 6, 5) * 3
    with torch.no_grad():  # a push: every prototype becomes one of the patches
        net.prototype_vectors.copy_(z[0, :, :4, :3].reshape(16, -1).T[:12, :, None, None])
    ones = torch.ones_like(net.prototype_vectors)
    x2_patch_sum = torch.nn.functional.conv2d(z**2, ones)
    p2 = torch.sum(net.prototype_vectors**2, dim=(1, 2, 3)).view(-1, 1, 1)
    xp = torch.nn.functional.conv2d(z, net.prototype_vectors)
    official = torch.relu(x2_patch_sum + (-2 * xp + p2))
    assert torch.equal(net.l2_distances(z), official)
