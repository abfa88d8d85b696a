"""DDP fit with 2 CPU processes over gloo, launched like a user would (the same code path as NCCL)."""

import csv
from pathlib import Path

import pytest
import torch

from tests.helpers import fast_overrides, run_cli

pytestmark = pytest.mark.slow  # multi-process runs


def test_ddp_cpu_fit_with_two_gloo_processes(parts_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    overrides = [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]
    done = run_cli("blackbox", *overrides, "trainer=ddp_cpu", "trainer.max_epochs=2")
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 1
    # 12 train images, batch 8, 2 ranks -> each rank sees 6 -> 1 step per epoch
    assert state["global_step"] == 2
    assert done.stdout.count("run folder:") == 1  # only rank 0 reports


ONE = ["trainer=cpu"]


def test_decompose_and_evaluate_on_three_gloo_processes_match_one(parts_root: Path, tmp_path: Path):
    """More ranks than work, and every rank still takes part in every collective: decompose has 2
    NMF class batches on 3 ranks (rank 2 has none); evaluate has 1 faithfulness image on 2 ranks."""

    def overrides(run: Path) -> list[str]:
        return [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]

    run_cli("blackbox", *overrides(tmp_path / "bb"), *ONE, "run_test=false")
    (ckpt,) = (tmp_path / "bb" / "checkpoints").glob("best-*.ckpt")
    shared = [
        "model.nmf.classes_per_batch=2",
        "kmex.enabled=true",  # KMEx's k-means per rank's classes, its nearest images min-reduced
        "kmex.prototypes_per_class=2",
    ]  # 2 batches
    spill = tmp_path / "spill"
    for name, (world, trainer) in {
        # the store path: every feature memory-mapped in spill_dir first, one process
        "one": (1, [*ONE, f"model.feature_store.spill_dir={spill}"]),
        # the streaming path: class batches read and released on 3 ranks, no store
        "three": (3, ["trainer=ddp_cpu", "trainer.devices=3"]),
    }.items():
        done = run_cli(
            "decompose",
            *overrides(tmp_path / f"dec_{name}"),
            *trainer,
            f"blackbox_ckpt={ckpt}",
            *shared,
        )
        assert (f"GLOBAL_RANK: 1, MEMBER: 2/{world}" in done.stderr + done.stdout) == (world > 1)
    assert not any(spill.rglob("*.f32"))  # the store was scratch: removed
    one = torch.load(tmp_path / "dec_one" / "posthoc.pt", weights_only=True)
    three = torch.load(tmp_path / "dec_three" / "posthoc.pt", weights_only=True)
    assert torch.allclose(one["prototypes"], three["prototypes"], atol=1e-5)
    for key in ("rows", "locations"):  # the min-reduce over rank shards finds the same patches
        assert torch.equal(one["projection"][key], three["projection"][key])
    assert three["extras"]["map_size"] == one["extras"]["map_size"]
    # no store: no memory-mapped features written anywhere by the streaming run
    assert not [p for p in (tmp_path / "dec_three").rglob("*") if p.suffix in (".f32", ".npy")]
    # DDP test metrics: every test image once (12 test images on 3 ranks), as one process counts
    metrics = {}
    for name in ("one", "three"):
        with (tmp_path / f"dec_{name}" / "logs" / "metrics.csv").open() as f:
            rows = [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]
        metrics[name] = next(r for r in rows if "test/images" in r)
    assert float(metrics["three"]["test/images"]) == float(metrics["one"]["test/images"]) == 16
    for key in ("test/acc", "test/agreement", "test/mean_logit_gap"):
        assert float(metrics["three"][key]) == pytest.approx(float(metrics["one"][key]), abs=1e-6)
    one, three = (
        torch.load(tmp_path / f"dec_{n}" / "kmex.pt", weights_only=True) for n in ("one", "three")
    )
    assert one["prototypes"].shape == (4, 2, 128)
    assert torch.allclose(one["prototypes"], three["prototypes"], atol=1e-6)
    assert torch.equal(one["projection"]["rows"], three["projection"]["rows"])

    tables = {}
    for name, trainer in {"one": ONE, "two": ["trainer=ddp_cpu", "trainer.devices=2"]}.items():
        run = tmp_path / f"eval_{name}"
        done = run_cli(
            "evaluate",
            *overrides(run),
            *trainer,
            f"blackbox_ckpt={ckpt}",
            f"posthoc={tmp_path / 'dec_one' / 'posthoc.pt'}",
            "evaluation.faithfulness.images=1",
            "evaluation.faithfulness.steps=8",
            "evaluation.lime.samples=20",
            "evaluation.bootstrap.resamples=50",
            "evaluation.figures.images=1",
        )
        assert ("GLOBAL_RANK: 1, MEMBER: 2/" in done.stderr + done.stdout) == (name != "one")
        assert done.stdout.count("run folder:") == 1  # one table, by rank 0
        with (run / "results.csv").open() as f:
            tables[name] = list(csv.DictReader(f))
    methods = [r["method"] for r in tables["two"]]
    assert methods == ["black box", "Post-hoc PPN", "Grad-CAM", "LIME"]
    for row_one, row_two in zip(tables["one"], tables["two"], strict=True):
        for key, value in row_one.items():
            if key in ("method", "part_protocol") or key.startswith("seconds") or value == "":
                assert key.startswith("seconds") or row_two[key] == value
                continue
            assert float(row_two[key]) == pytest.approx(float(value), abs=1e-5), (
                row_one["method"],
                key,
            )


def test_faithfulness_callback_on_two_gloo_processes_logs_the_whole_subsets_value(
    parts_root: Path, tmp_path: Path
):
    """3 images over 2 ranks (2 + 1): each rank explains its share, every rank logs the value over
    all 3, equal to one process measuring the same checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from proto_lightning.callbacks import FaithfulnessCallback
    from proto_lightning.models import BlackBoxClassifier

    run = tmp_path / "run"
    overrides = [o for o in fast_overrides(parts_root, run) if not o.startswith("trainer=")]
    run_cli(
        "blackbox",
        *overrides,
        "trainer=ddp_cpu",
        "callbacks.faithfulness.images=3",
        "callbacks.faithfulness.every_n_epochs=1",
        "callbacks.faithfulness.steps=6",
    )
    with (run / "logs" / "metrics.csv").open() as f:
        rows = [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]
    cfg = OmegaConf.load(run / "config.yaml")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    (best,) = (run / "checkpoints").glob("best-*.ckpt")  # the one epoch: validated and tested
    module = BlackBoxClassifier.load_checkpoint(best)
    callback = FaithfulnessCallback(cfg.evaluation, images=3, steps=6, seed=cfg.seed)
    for split, dataset in (("val", datamodule.val_set), ("test", datamodule.test_set)):
        one = callback.measure(module, datamodule, dataset)
        (row,) = [r for r in rows if f"{split}/deletion_auc" in r]
        for name in ("deletion_auc", "insertion_auc"):
            # float32 curves of other batch compositions: as the other DDP tests, to 1e-5
            assert float(row[f"{split}/{name}"]) == pytest.approx(one[name], abs=1e-5)


def push_on_a_rank(rank: int, world: int, parts_root: str, store: str, out: str) -> None:
    """One gloo rank: the same ProtoPNet, its prototypes moved by a rank's own noise (as ranks may
    drift on ties or non-deterministic kernels), pushed; what it ends with, saved."""
    import torch.distributed as dist

    from proto_lightning.data import CUB200DataModule
    from proto_lightning.models.protopnet import ProtoPNet

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = ProtoPNet(
        {"name": "small_cnn"}, num_classes=4, prototypes_per_class=2, prototype_dim=16
    )
    model.eval()
    noise = torch.randn(
        model.net.prototype_vectors.shape, generator=torch.Generator().manual_seed(rank)
    )
    model.net.prototype_vectors.data += 1e-2 * noise
    queries = model.net.prototype_vectors.detach().flatten(1).clone()
    dm = CUB200DataModule(parts_root, image_size=48, val_fraction=0.25, eval_batch_size=5)
    dm.setup()
    found = model.push(dm)
    torch.save(
        {
            "queries": queries,
            "vectors": model.net.prototype_vectors.detach().flatten(1),
            "rows": torch.from_numpy(found.rows),
            "boxes": model.extras["rf_boxes"],
        },
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_protopnet_ranks_agree_after_a_push(parts_root: Path, tmp_path: Path):
    """3 gloo ranks whose prototypes differ slightly: each searches its share of the classes once,
    the min-reduce hands every rank the same patches; each class's winner is the nearest patch to
    the query of the rank that owns the class (classes 0-1, 2, 3), by brute force."""
    import torch.multiprocessing as mp

    from proto_lightning.data import CUB200DataModule
    from proto_lightning.models.protopnet import ProtoPNet
    from tests.test_protopnet import push_patches

    mp.spawn(
        push_on_a_rank,
        args=(3, str(parts_root), str(tmp_path / "store"), str(tmp_path)),
        nprocs=3,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(3)]
    for other in ranks[1:]:
        assert torch.equal(other["vectors"], ranks[0]["vectors"])
        assert torch.equal(other["rows"], ranks[0]["rows"])
        assert torch.equal(other["boxes"], ranks[0]["boxes"])
    torch.manual_seed(0)
    model = ProtoPNet(
        {"name": "small_cnn"}, num_classes=4, prototypes_per_class=2, prototype_dim=16
    )
    dm = CUB200DataModule(parts_root, image_size=48, val_fraction=0.25, eval_batch_size=5)
    dm.setup()
    batch, patches, (H, W) = push_patches(model, dm)
    d = patches.shape[-1]
    owner = {0: 0, 1: 0, 2: 1, 3: 2}
    for j in range(8):
        c = j // 2
        own = batch["label"] == c
        query = ranks[owner[c]]["queries"][j]
        nearest = int(((patches[own].reshape(-1, d) - query) ** 2).sum(1).argmin())
        assert int(batch["row"][own][nearest // (H * W)]) == int(ranks[0]["rows"][j])


def test_a_rank_short_of_memory_stops_every_rank_with_one_line(parts_root: Path, tmp_path: Path):
    """3 gloo ranks, 2 class batches: the two ranks with a batch find too little free memory for
    it (1e9 GiB kept free), the third has none to check; all three stop at once, each with one
    line and no traceback, before any image is read, instead of waiting on a collective."""
    import subprocess
    import sys

    overrides = [o for o in fast_overrides(parts_root, tmp_path / "bb") if o != "trainer=cpu"]
    run_cli("blackbox", *overrides, *ONE, "run_test=false")
    (ckpt,) = (tmp_path / "bb" / "checkpoints").glob("best-*.ckpt")
    run = tmp_path / "dec"
    overrides = [o for o in fast_overrides(parts_root, run) if o != "trainer=cpu"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "proto_lightning",
            "decompose",
            *overrides,
            "trainer=ddp_cpu",
            "trainer.devices=3",
            f"blackbox_ckpt={ckpt}",
            "model.nmf.classes_per_batch=2",
            "model.feature_store.reserve_gb=1e9",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    # the three processes share stderr, so two lines can meet without a newline: count messages
    assert done.stderr.count("error: ") == 3, done.stderr[-3000:]
    assert done.stderr.count("error: a class batch needs") == 2
    assert done.stderr.count("error: rank 0 stopped: a class batch needs") == 1
    assert not (run / "posthoc.pt").exists()
