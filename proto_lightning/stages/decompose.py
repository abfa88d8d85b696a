"""The decompose stage: frozen black box -> post-hoc part-prototype network (`posthoc.pt`), then tested."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from proto_lightning.config import CONF_DIR, resolved_container
from proto_lightning.distributed import barrier, contiguous_share, gather_objects, launch
from proto_lightning.errors import IncompatibleWeightsError
from proto_lightning.models import BlackBoxClassifier, BlackBoxNet
from proto_lightning.models.files import require_class_count
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.prototypes.boxes import high_activation_box, receptive_field_boxes
from proto_lightning.prototypes.decomposition import HeadDecomposition, decompose_head
from proto_lightning.prototypes.features import FeatureStore, collect_features
from proto_lightning.prototypes.projection import NearestPatchIndex, Projection, all_reduce_nearest
from proto_lightning.stages.common import (
    StageResult,
    build_trainer,
    finish_logging,
    logs_location,
    stage_config,
    stage_device,
    start_run,
)
from proto_lightning.stages.evaluate import run_evaluate

log = logging.getLogger(__name__)

# The guarantee (same top-1, max |logit gap| < 1e-4) is a float32 one: under autocast both logits
# would be rounded to 16 bits, so the network is tested in full precision whatever the trainer says.
EXACT_PRECISION = "32-true"


def _index_rows(
    store: FeatureStore, rows: slice, metric: str, device: str, chunk: int
) -> NearestPatchIndex:
    """A FAISS index over some rows of the feature store, added in chunks."""
    index = NearestPatchIndex(store.features.shape[1], metric=metric, device=device)
    for start in range(rows.start, rows.stop, chunk):
        s = slice(start, min(start + chunk, rows.stop))
        index.add(
            store.features[s],
            store.labels[s],
            store.rows[s],
            store.image_ids[s],
            store.locations[s],
        )
    return index


def project_prototypes(
    store: FeatureStore,
    prototypes: torch.Tensor,
    metric: str,
    class_restricted: bool,
    device: str,
    chunk: int = 65536,
) -> Projection:
    """Nearest training patch of every prototype (C, k, D), streamed from the feature store in chunks.

    Restricted to the prototype's class, one class's index exists at a time, so the index memory is
    bounded by the largest class rather than the push set; otherwise one index holds every patch.
    """
    C, k, D = prototypes.shape
    queries = prototypes.reshape(C * k, D)
    if not class_restricted:
        return _index_rows(store, slice(0, len(store.features)), metric, device, chunk).search(
            queries
        )
    found = Projection.empty(C * k)
    for c in range(C):
        rows = slice(int(store.offsets[c]), int(store.offsets[c + 1]))
        if rows.stop > rows.start:  # classes of other DDP ranks have empty slots
            mine = np.arange(c * k, (c + 1) * k)
            found.place(_index_rows(store, rows, metric, device, chunk).search(queries[mine]), mine)
    return found


@torch.no_grad()
def winner_boxes(
    net: BlackBoxNet,
    datamodule,
    projection: Projection,
    prototypes: torch.Tensor,
    percentile: float,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Receptive-field and high-activation boxes (Q, 4) of each prototype's winning patch, in input pixels."""
    image_size = datamodule.image_size
    rf = receptive_field_boxes(net.features, image_size, projection.locations, device)
    flat = prototypes.reshape(-1, prototypes.shape[-1]).to(device)  # (Q, D)
    push = datamodule.push_set
    high = np.zeros_like(rf)
    for row in np.unique(projection.rows):
        image = push[int(np.searchsorted(push.rows, row))]["image"][None].to(device)
        feature_map = net.features(image)[0]  # (D, H, W)
        for q in np.flatnonzero(projection.rows == row):
            activation = torch.einsum("dhw,d->hw", feature_map, flat[q])  # the prototype's heatmap
            high[q] = high_activation_box(activation.cpu(), image_size, percentile)
    return rf, high


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
    evaluation = OmegaConf.merge(cfg.evaluation, {"methods": ["posthoc"]})
    csv = OmegaConf.load(CONF_DIR / "logger" / "csv.yaml")
    return stage_config(
        cfg,
        "evaluate",
        from_run=None,
        posthoc=str(artifact),
        protopnet_ckpt=None,
        evaluation=evaluation,
        logger=csv,
    )


def run_decompose(cfg: DictConfig) -> StageResult:
    """Decompose the head of `cfg.blackbox_ckpt` into `model.prototypes_per_class` prototypes per class."""
    run_dir, datamodule = start_run(cfg)
    blackbox = BlackBoxClassifier.load_checkpoint(cfg.blackbox_ckpt, trust_file=cfg.trust_file)
    require_class_count(
        "black box",
        cfg.blackbox_ckpt,
        blackbox.hparams.num_classes,
        datamodule.num_classes,
        "decompose",
    )
    expected = cfg.model.get("backbone")
    if expected is not None and expected.name != blackbox.net.backbone.name:
        raise IncompatibleWeightsError(
            f"black box {cfg.blackbox_ckpt} has backbone {blackbox.net.backbone.name!r} but the config "
            f"(model/backbone, e.g. from an experiment) says {expected.name!r}"
        )
    settings = cfg.model
    fabric = launch(cfg.trainer)
    rank, world = fabric.global_rank, fabric.world_size
    device = fabric.device if world > 1 else stage_device(cfg)
    net = blackbox.net.eval().requires_grad_(False).to(device)
    datamodule.setup("test")
    C, cpb = datamodule.num_classes, settings.nmf.classes_per_batch
    # a rank's share: whole NMF class batches, contiguous, so results are those of one process
    batches = contiguous_share(-(-C // cpb), rank, world).tolist()
    classes = [c for b in batches for c in range(b * cpb, min(C, (b + 1) * cpb))]
    timings: dict[str, float] = {}
    V, b = net.head.weight.detach().cpu(), net.head.bias.detach().cpu()

    start = time.perf_counter()
    store = None
    if classes:
        store = collect_features(
            net.features,
            datamodule.push_dataloader(classes if world > 1 else None),
            datamodule.push_set.labels[np.isin(datamodule.push_set.labels, classes)],
            C,
            settings.feature_store.ram_budget_gb,
            Path(settings.feature_store.spill_dir or run_dir)
            / (f"rank{rank}" if world > 1 else ""),
            device,
        )
    timings["features"] = time.perf_counter() - start

    start = time.perf_counter()
    local = None
    if classes:
        local = decompose_head(
            store,
            V,
            settings.prototypes_per_class,
            nmf_max_iter=settings.nmf.max_iter,
            nmf_tol=settings.nmf.tol,
            classes_per_batch=cpb,
            refine_objective=settings.refinement.objective,
            refine_max_iter=settings.refinement.max_iter,
            refine_tol=settings.refinement.tol,
            refine_constraint=settings.refinement.constraint,
            beta_bound=settings.refinement.beta_bound,
            seed=cfg.seed,
            device=device,
            batches=batches,
        )
    decomposition = HeadDecomposition.concatenate(
        [p for p in gather_objects(local) if p is not None]
    )
    timings["nmf+refinement"] = time.perf_counter() - start

    start = time.perf_counter()
    projection = all_reduce_nearest(
        project_prototypes(
            store,
            decomposition.prototypes,
            settings.projection.metric,
            settings.projection.class_restricted,
            settings.projection.device,
        )
        if store is not None
        else Projection.empty(C * settings.prototypes_per_class)
    )  # each rank searched its share of the patches: min-reduce
    rf, high = winner_boxes(
        net,
        datamodule,
        projection,
        decomposition.prototypes,
        settings.projection.high_activation_percentile,
        device,
    )
    timings["projection"] = time.perf_counter() - start

    extras = {
        "bases": decomposition.bases,
        "alpha": decomposition.alpha,
        "beta": decomposition.beta,
        "residual_norm": decomposition.residual_norm,
        "objective_even": decomposition.objective_even,
        "objective_refined": decomposition.objective_refined,
        "nmf_objective": decomposition.nmf_objective,
        "rf_boxes": rf,
        "high_activation_boxes": high,
        # a rank with no class batch has no store: take the map size of one that has
        "map_size": next(
            m
            for m in gather_objects(store.map_size if store is not None else None)
            if m is not None
        ),
        "image_size": datamodule.image_size,
        "class_names": datamodule.records.class_names,
        "part_names": datamodule.records.part_names,
        "mean": datamodule.mean,
        "std": datamodule.std,
    }
    model = PostHocPrototypeNetwork(net.cpu(), decomposition.prototypes, b, projection, extras)
    artifact = run_dir / "posthoc.pt"
    if rank == 0:
        artifact = model.save(
            run_dir / "posthoc.pt",
            {
                "blackbox_ckpt": str(Path(cfg.blackbox_ckpt).resolve()),
                "config": OmegaConf.to_yaml(resolved_container(cfg)),
                "timings": timings,
            },
        )
    barrier()

    if str(cfg.trainer.get("precision")) not in ("32", "32-true", "None"):
        log.info(
            "decompose tests in %s, not trainer.precision=%s",
            EXACT_PRECISION,
            cfg.trainer.precision,
        )
    trainer = build_trainer(cfg, precision=EXACT_PRECISION)
    summary = log_decomposition(decomposition, V, trainer.logger)
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    result = StageResult(
        "decompose", run_dir, {"artifact": artifact, "logs": logs_location(trainer)}
    )
    gallery = run_dir / "gallery"
    if gallery.is_dir():
        result.artifacts["gallery"] = gallery
    result.metrics.update({k: float(v) for k, v in metrics.items()})
    result.metrics.update(summary)
    result.metrics.update({f"time/{k}": v for k, v in timings.items()})
    if cfg.get("evaluate_after", False):
        evaluation = run_evaluate(evaluation_config(cfg, artifact))
        result.metrics.update(evaluation.metrics)
        result.artifacts.update(evaluation.artifacts)
        trainer.logger.log_metrics({f"eval/{k}": v for k, v in evaluation.metrics.items()})
    finish_logging(trainer.logger)
    return result
