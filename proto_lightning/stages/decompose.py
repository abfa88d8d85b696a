"""The decompose stage: frozen black box -> post-hoc part-prototype network (`posthoc.pt`), then tested."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from proto_lightning.callbacks.faithfulness import METRICS as FAITHFULNESS_METRICS
from proto_lightning.config import resolved_container
from proto_lightning.cuda_settings import CudaSettings, feature_math, prepare_model
from proto_lightning.data.loaders import image_path
from proto_lightning.distributed import (
    barrier,
    contiguous_share,
    fail_together,
    gather_objects,
    launch,
)
from proto_lightning.errors import (
    ConfigValueError,
    DatasetLayoutError,
    IncompatibleWeightsError,
    MissingArtifactError,
    ResourceError,
)
from proto_lightning.metrics.part_consistency import PROTOCOLS, metric_label
from proto_lightning.models import BlackBoxClassifier, BlackBoxNet
from proto_lightning.models.adapters import (
    Preprocessing,
    declared_preprocessing,
    require_preprocessing,
)
from proto_lightning.models.files import require_class_count
from proto_lightning.models.imported import import_classifier, save_as_checkpoint
from proto_lightning.models.kmex import KMExNetwork
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.models.posthoc_network import network_extras
from proto_lightning.prototypes.boxes import posthoc_boxes
from proto_lightning.prototypes.decomposition import (
    HeadDecomposition,
    NMFSettings,
    RefinementSettings,
)
from proto_lightning.prototypes.kmeans import KMeansSettings
from proto_lightning.prototypes.projection import (
    Projection,
    ProjectionSettings,
    all_reduce_nearest,
)
from proto_lightning.prototypes.stream import (
    BatchPlan,
    BatchSettings,
    StreamResult,
    StreamSteps,
    decompose_stream,
    feature_elements,
    planned_batches,
)
from proto_lightning.stages.common import (
    StageResult,
    build_trainer,
    finish_logging,
    logs_location,
    stage_config,
    stage_device,
    start_run,
)
from proto_lightning.stages.evaluate import metric_names, run_evaluate

log = logging.getLogger(__name__)

# The guarantee (same top-1, max |logit gap| < 1e-4) is a float32 one: under autocast both logits
# would be rounded to 16 bits, so the network is tested in full precision whatever the trainer says.
EXACT_PRECISION = "32-true"
EVALUATED_METHODS = ["posthoc"]  # evaluate_after's rows: the new network's, beside the black box's


def log_decomposition(
    decomposition: HeadDecomposition, V: torch.Tensor, logger
) -> dict[str, float]:
    """Per-class residual and objective table, and headline numbers, to the logger."""
    rel_error = decomposition.relative_head_error(V)
    summary = {
        "decompose/residual_norm_mean": float(decomposition.residual_norm.mean()),
        "decompose/relative_head_error": rel_error,
        "decompose/objective_even_mean": float(decomposition.objective_even.mean()),
        "decompose/objective_refined_mean": float(decomposition.objective_refined.mean()),
    }
    per_class_error = (
        (V.double() - decomposition.prototypes.double().sum(1)).norm(dim=1) / V.double().norm(dim=1)
    ).tolist()
    rows = [
        [
            c,
            float(decomposition.residual_norm[c]),
            per_class_error[c],
            float(decomposition.objective_even[c]),
            float(decomposition.objective_refined[c]),
        ]
        for c in range(len(V))
    ]
    if hasattr(logger, "log_table"):
        logger.log_table(
            "decompose/per_class",
            columns=[
                "class",
                "residual_norm_before",
                "relative_head_error_after",
                "objective_even",
                "objective_refined",
            ],
            data=rows,
        )
    logger.log_metrics(summary)
    log.info(
        "decomposition: residual before refinement %.4g (mean over classes), relative head error after %.3g, "
        "objective %.4f (even split) -> %.4f (refined)",
        summary["decompose/residual_norm_mean"],
        rel_error,
        summary["decompose/objective_even_mean"],
        summary["decompose/objective_refined_mean"],
    )
    return summary


def evaluation_config(cfg: DictConfig, artifact: Path) -> DictConfig:
    """The evaluate stage's config for the network just made: its rows only, into <run>/evaluate,
    logged as CSV there (this stage's logger carries the metrics, e.g. to a W&B sweep)."""
    evaluation = OmegaConf.merge(cfg.evaluation, {"methods": EVALUATED_METHODS})
    return stage_config(
        cfg,
        "evaluate",
        from_run=None,
        posthoc=str(artifact),
        protopnet_ckpt=None,
        evaluation=evaluation,
        logger=cfg.evaluate_after_logger,
    )


def require_push_images(datamodule) -> None:
    """Every class needs push (training) images: its prototypes are factorised from their features
    and shown as one of their patches; a class without any is refused, naming it."""
    present = np.unique(datamodule.push_set.labels)
    missing = sorted(set(range(datamodule.num_classes)) - set(present.tolist()))
    if missing:
        names = [datamodule.records.class_names[c] for c in missing]
        raise DatasetLayoutError(
            f"class(es) {names} have no training images in {datamodule.root}, so they have no "
            "features to decompose and no patch to show: add training images of them, or train "
            "and decompose the black box on data without them"
        )


def require_blackbox_settings(cfg: DictConfig) -> None:
    """One black box, named completely: a checkpoint, or a classifier's name and weight file."""
    if cfg.get("blackbox") is None:
        if cfg.get("blackbox_ckpt") is None:
            raise ConfigValueError(
                "decompose needs a black box: blackbox_ckpt=<checkpoint of `proto-lightning "
                "blackbox`>, or your own classifier as blackbox=<torchvision or timm name> "
                "blackbox_weights=<state-dict file>"
            )
        return
    if cfg.get("blackbox_ckpt") is not None:
        raise ConfigValueError("give blackbox_ckpt=<checkpoint> or blackbox=<name>, not both")
    if cfg.get("blackbox_weights") is None:
        raise ConfigValueError(
            f"blackbox={cfg.blackbox} needs blackbox_weights=<its state-dict file>; a randomly "
            "initialised classifier has nothing to explain"
        )


def import_blackbox(
    cfg: DictConfig, num_classes: int, run_dir: Path, class_names: list[str]
) -> BlackBoxNet | None:
    """With `blackbox=<name> blackbox_weights=<file>`: the user's classifier (frozen), also written (by
    global rank 0) as the black-box checkpoint `<run>/blackbox.ckpt`, which becomes
    `cfg.blackbox_ckpt`; else None."""
    require_blackbox_settings(cfg)
    if cfg.get("blackbox") is None:
        return None
    classifier = import_classifier(
        cfg.blackbox,
        cfg.blackbox_weights,
        num_classes,
        cfg.get("blackbox_kwargs"),
        cfg.trust_file,
        class_names,
    )
    if cfg.get("check_preprocessing", True):
        body = classifier.net.backbone.body
        data = Preprocessing(cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std))
        where = "the data config (data.image_size, data.mean, data.std)"
        require_preprocessing(declared_preprocessing(getattr(body, "model", body)), data, where)
    checkpoint = run_dir / "blackbox.ckpt"
    if rank_zero_only.rank == 0:  # one writer: under torchrun/srun every rank runs this
        save_as_checkpoint(classifier, checkpoint, cfg.blackbox_weights)
    with open_dict(cfg):
        cfg.blackbox_ckpt = str(checkpoint)
    return classifier.net.eval().requires_grad_(False)


def load_blackbox(cfg: DictConfig, num_classes: int, class_names: list[str]) -> BlackBoxNet:
    """The frozen black box of `cfg.blackbox_ckpt`, refused when its classes or backbone do not fit."""
    blackbox = BlackBoxClassifier.load_checkpoint(cfg.blackbox_ckpt, trust_file=cfg.trust_file)
    found = blackbox.hparams.num_classes
    require_class_count(
        "black box", cfg.blackbox_ckpt, found, num_classes, "decompose", class_names
    )
    expected = cfg.model.get("backbone")
    if expected is not None and expected.name != blackbox.net.backbone.name:
        raise IncompatibleWeightsError(
            f"black box {cfg.blackbox_ckpt} has backbone {blackbox.net.backbone.name!r} but the config "
            f"(model/backbone, e.g. from an experiment) says {expected.name!r}"
        )
    return blackbox.net.eval().requires_grad_(False)


@dataclass(frozen=True)
class DecomposeSettings:
    """The steps' settings from `cfg.model`, `cfg.kmex` and `cfg.cuda`, checked (each typo named)
    before any work."""

    nmf: NMFSettings
    refinement: RefinementSettings
    projection: ProjectionSettings
    batches: BatchSettings
    kmeans: KMeansSettings | None
    cuda: CudaSettings

    @classmethod
    def of(cls, cfg: DictConfig) -> DecomposeSettings:
        """Check and build them; also refuse an incomplete black box or a named file that does not
        exist."""
        require_blackbox_settings(cfg)
        for key in ("blackbox_ckpt", "blackbox_weights"):
            if cfg.get(key) is not None and not Path(cfg[key]).is_file():
                raise MissingArtifactError(f"{key}={cfg[key]}: no such file")
        store = cfg.model.feature_store
        kmex = cfg.get("kmex")
        kmeans = None
        if kmex is not None and kmex.enabled:
            kmeans = KMeansSettings(kmex.prototypes_per_class, kmex.n_init, kmex.max_iter)
        return cls(
            NMFSettings(**cfg.model.nmf),
            RefinementSettings(**cfg.model.refinement),
            ProjectionSettings(**cfg.model.projection),
            BatchSettings(store.max_batch_gb, store.reserve_gb),
            kmeans,
            CudaSettings(**cfg.cuda),
        )


def plan_batches(
    net: BlackBoxNet,
    datamodule,
    settings: DecomposeSettings,
    spill: Path | None,
    rank: int,
    world: int,
    device,
) -> BatchPlan:
    """The class batches (from the push labels and one probe forward pass) and this rank's share,
    checked against free memory, or free disk for a spilled store, before any image is read."""
    elements = feature_elements(net.features, datamodule.push_set[0]["image"], device)
    plan = BatchPlan.of(
        datamodule.push_set.labels,
        datamodule.num_classes,
        elements,
        settings.nmf.classes_per_batch,
        settings.batches,
        rank,
        world,
    )
    plan.check(device, settings.batches, spill)
    return plan


def spill_folder(cfg: DictConfig, run_dir: Path, rank: int, world: int) -> Path | None:
    """Where this rank's store is memory-mapped with `model.feature_store.spill_dir`; else None."""
    spill_dir = cfg.model.feature_store.get("spill_dir")
    if spill_dir is None:
        return None
    return Path(spill_dir) / run_dir.name / (f"rank{rank}" if world > 1 else "")


def decompose_share(
    net: BlackBoxNet,
    datamodule,
    plan: BatchPlan,
    cfg: DictConfig,
    settings: DecomposeSettings,
    spill: Path | None,
    device,
) -> StreamResult:
    """This rank's classes decomposed, projected and (with `kmex.enabled`) clustered, batch by
    batch (`decompose_stream`); a device out of memory is a one-line `ResourceError`."""
    V = net.head.weight.detach().cpu()
    steps = StreamSteps(
        cfg.model.prototypes_per_class,
        settings.nmf,
        settings.refinement,
        settings.projection,
        settings.kmeans,
        cfg.seed,
    )
    labels = datamodule.push_set.labels
    try:
        with feature_math(settings.cuda, device):
            batches = planned_batches(
                net.features, datamodule.push_dataloader, labels, plan, device, spill
            )
            return decompose_stream(batches, V, steps)
    except torch.OutOfMemoryError as err:
        raise ResourceError(
            f"{device} ran out of memory in a class batch ({str(err).splitlines()[0]}): lower "
            "model.feature_store.max_batch_gb or model.nmf.classes_per_batch"
        ) from err
    finally:
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)  # the store is scratch, not a result


@dataclass
class Gathered:
    """Every rank's share joined in class order: the decomposition, the nearest patches, KMEx."""

    decomposition: HeadDecomposition
    projection: Projection
    kmex_centres: torch.Tensor | None
    kmex_projection: Projection | None
    map_size: tuple[int, int]
    timings: dict[str, float]


def gather_shares(local: StreamResult) -> Gathered:
    """Join the ranks' results; an unrestricted projection searches every rank's index with every
    prototype and keeps the nearest; a time is the slowest rank's."""
    parts = gather_objects(
        None if local.decomposition is None else (local.decomposition, local.kmex_centres)
    )
    decomposition = HeadDecomposition.concatenate([p[0] for p in parts if p is not None])
    centres = [p[1] for p in parts if p is not None and p[1] is not None]
    projection = local.projection
    if local.index is not None:  # unrestricted: this rank's patches, every prototype
        projection = local.index.search(decomposition.prototypes.flatten(0, 1))
    kmex = None
    if local.kmex_projection is not None:
        kmex = all_reduce_nearest(local.kmex_projection)
    timings = gather_objects(local.timings)
    map_size = next(m for m in gather_objects(local.map_size) if m is not None)
    return Gathered(
        decomposition,
        all_reduce_nearest(projection),
        torch.cat(centres) if centres else None,
        kmex,
        map_size,
        {key: max(t[key] for t in timings) for key in timings[0]},
    )


def boxes_by_rank(
    net: BlackBoxNet,
    gathered: Gathered,
    datamodule,
    settings: ProjectionSettings,
    rank: int,
    world: int,
    device,
) -> dict[str, np.ndarray]:
    """Receptive-field and high-activation boxes, each rank those of a contiguous share of the
    prototypes, gathered in order."""
    Q = len(gathered.projection.rows)
    local = posthoc_boxes(
        net.features,
        gathered.projection,
        gathered.decomposition.prototypes,
        datamodule.push_set,
        datamodule.image_size,
        settings.high_activation_percentile,
        device,
        queries=contiguous_share(Q, rank, world),
    )
    parts = gather_objects(local)
    return {name: np.concatenate([p[name] for p in parts]) for name in local}


def save_kmex(
    net: BlackBoxNet, gathered: Gathered, cfg: DictConfig, run_dir: Path, rank: int
) -> Path | None:
    """With `kmex.enabled`: KMEx's k-means prototypes, each shown as its class's nearest training
    image (L2 on the pooled vectors), written by rank 0 as `kmex.pt`."""
    if gathered.kmex_centres is None:
        return None
    model = KMExNetwork(net, gathered.kmex_centres, cfg.kmex.epsilon, gathered.kmex_projection)
    artifact = run_dir / "kmex.pt"
    if rank == 0:
        model.save(artifact, {"blackbox_ckpt": str(Path(cfg.blackbox_ckpt).resolve())})
    barrier()
    return artifact


def build_network(
    net: BlackBoxNet,
    gathered: Gathered,
    boxes: dict[str, np.ndarray],
    datamodule,
) -> PostHocPrototypeNetwork:
    """The post-hoc network (on the CPU), with what its artifact records beside the prototypes."""
    preprocessing = {
        "image_size": datamodule.image_size,
        "mean": datamodule.mean,
        "std": datamodule.std,
    }
    records = datamodule.records
    projection = gathered.projection
    paths = [image_path(datamodule.push_set, int(row)) for row in projection.rows]
    extras = network_extras(
        gathered.decomposition,
        boxes,
        gathered.map_size,
        preprocessing,
        records.class_names,
        records.part_names,
        nearest_paths=paths,
    )
    bias = net.head.bias.detach().cpu()
    prototypes = gathered.decomposition.prototypes
    return PostHocPrototypeNetwork(net.cpu(), prototypes, bias, projection, extras)


def save_artifact(
    model: PostHocPrototypeNetwork,
    cfg: DictConfig,
    run_dir: Path,
    timings: dict[str, float],
    rank: int,
) -> Path:
    """Rank 0 writes `posthoc.pt` (with the source checkpoint, config and timings); all ranks wait."""
    artifact = run_dir / "posthoc.pt"
    if rank == 0:
        metadata = {
            "blackbox_ckpt": str(Path(cfg.blackbox_ckpt).resolve()),
            "config": OmegaConf.to_yaml(resolved_container(cfg)),
            "timings": timings,
        }
        model.save(artifact, metadata)
    barrier()
    return artifact


def test_and_log(
    cfg: DictConfig,
    model: PostHocPrototypeNetwork,
    decomposition: HeadDecomposition,
    datamodule,
    result: StageResult,
    timings: dict[str, float],
) -> StageResult:
    """Test the network against the black box in float32, log the decomposition and, with
    `evaluate_after`, evaluate it; the metrics go into `result`."""
    if str(cfg.trainer.get("precision")) not in ("32", "32-true", "None"):
        log.info(
            "decompose tests in %s, not trainer.precision=%s",
            EXACT_PRECISION,
            cfg.trainer.precision,
        )
    trainer = build_trainer(cfg, precision=EXACT_PRECISION)
    V = model.blackbox.head.weight.detach().cpu()
    summary = log_decomposition(decomposition, V, trainer.logger)
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    result.metrics.update({k: float(v) for k, v in metrics.items()})
    result.metrics.update(summary)
    result.metrics.update({f"time/{k}": v for k, v in timings.items()})
    result.artifacts.update(logs_location(trainer))
    if (result.run_dir / "gallery").is_dir():
        result.artifacts["gallery"] = result.run_dir / "gallery"
    if cfg.get("evaluate_after", False):
        evaluation = run_evaluate(evaluation_config(cfg, result.artifacts["artifact"]))
        result.metrics.update(evaluation.metrics)
        result.artifacts.update(evaluation.artifacts)
        trainer.logger.log_metrics({f"eval/{k}": v for k, v in evaluation.metrics.items()})
    finish_logging(trainer.logger)
    return result


def run_decompose(cfg: DictConfig) -> StageResult:
    """Decompose the head of `cfg.blackbox_ckpt` (or of the imported `cfg.blackbox`) into
    `model.prototypes_per_class` prototypes per class: plan the class batches -> decompose each
    rank's batches as they stream -> gather -> boxes -> build the network and its artifact -> test
    and log. A mistake on any rank stops every rank with its message."""
    settings = DecomposeSettings.of(cfg)
    run_dir, datamodule = start_run(cfg)
    class_names = datamodule.records.class_names
    net = import_blackbox(cfg, datamodule.num_classes, run_dir, class_names)
    if net is None:
        net = load_blackbox(cfg, datamodule.num_classes, class_names)
    fabric = launch(cfg.trainer)
    rank, world = fabric.global_rank, fabric.world_size
    device = fabric.device if world > 1 else stage_device(cfg)
    net = prepare_model(net, settings.cuda, device)
    datamodule.setup("test")
    require_push_images(datamodule)
    spill = spill_folder(cfg, run_dir, rank, world)
    plan = fail_together(
        lambda: plan_batches(net, datamodule, settings, spill, rank, world, device)
    )
    local = fail_together(
        lambda: decompose_share(net, datamodule, plan, cfg, settings, spill, device)
    )
    timings: dict[str, float] = {}
    with timed(timings, "gather"):
        gathered = gather_shares(local)
    with timed(timings, "boxes"):
        boxes = boxes_by_rank(net, gathered, datamodule, settings.projection, rank, world, device)
    timings = {**gathered.timings, **timings}
    kmex = save_kmex(net, gathered, cfg, run_dir, rank)
    model = build_network(
        net.to(memory_format=torch.contiguous_format), gathered, boxes, datamodule
    )
    artifact = save_artifact(model, cfg, run_dir, timings, rank)
    result = StageResult("decompose", run_dir, {"artifact": artifact})
    if kmex is not None:
        result.artifacts["kmex"] = kmex
    return test_and_log(cfg, model, gathered.decomposition, datamodule, result, timings)


def check_config(cfg: DictConfig) -> None:
    """The CLI's check before a run folder exists: every setting and named file (`DecomposeSettings`)."""
    DecomposeSettings.of(cfg)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall-clock seconds of the block as `timings[name]`."""
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


# seconds of the stage's steps (a step's time is its slowest rank's): reading and the forward pass,
# factorisation and heatmaps, refinement (CPU, overlapped with the next batch), the part of it the
# device waited for, joining the ranks' results, the prototypes' boxes
TIMINGS = ("features", "nmf", "refinement", "refinement_wait", "gather", "boxes")
# what the decompose stage reports besides evaluate's metrics (with evaluate_after)
DECOMPOSE_METRICS = {
    *(
        f"test/{k}"
        for k in (
            "acc",
            "agreement",
            "images",
            "relative_head_error",
            "max_logit_gap",
            "mean_logit_gap",
        )
    ),
    *(
        f"decompose/{k}"
        for k in (
            "residual_norm_mean",
            "relative_head_error",
            "objective_even_mean",
            "objective_refined_mean",
        )
    ),
    *(f"time/{k}" for k in TIMINGS),
}


def reported_metrics(cfg: DictConfig) -> set[str]:
    """Every metric name the stage reports with this config, known before it runs (see `objective`)."""
    reported = set(DECOMPOSE_METRICS)
    if cfg.callbacks.get("faithfulness") is not None:
        reported |= {
            f"test/{metric_label(name, protocol)}"
            for name in FAITHFULNESS_METRICS
            for protocol in PROTOCOLS
        }
    if cfg.get("evaluate_after", False):
        reported |= metric_names(EVALUATED_METHODS)
    return reported
