"""The evaluate stage: black box, post-hoc PPN, ProtoPNet, Grad-CAM and LIME side by side (DESIGN.md section 5)."""

from __future__ import annotations

import logging
from dataclasses import fields, is_dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from proto_lightning.callbacks.gallery import draw_prototype_grid, nearest_patch_image, to_uint8
from proto_lightning.config import resolved_container
from proto_lightning.distributed import barrier, contiguous_share, gather_objects, launch
from proto_lightning.evaluation.artifacts import Models, load_models, locate
from proto_lightning.evaluation.figures import PrototypeTerm, curves_figure, explanation_figure
from proto_lightning.evaluation.scores import (
    Faithfulness,
    PartCoverage,
    explain_timed,
    faithfulness,
    part_coverage,
    predict,
)
from proto_lightning.evaluation.table import ResultRow, columns, write_csv, write_markdown
from proto_lightning.explainers import (
    Explainer,
    GradCAMExplainer,
    LimeExplainer,
    PostHocExplainer,
    ProtoPNetExplainer,
    PrototypeExplainer,
)
from proto_lightning.metrics.bootstrap import Estimate, bootstrap_estimate, mean_estimate
from proto_lightning.metrics.part_consistency import consistency, region_half_size, stability
from proto_lightning.prototypes.boxes import high_activation_box
from proto_lightning.stages.common import (
    StageResult,
    build,
    finish_logging,
    stage_device,
    start_run,
)

log = logging.getLogger(__name__)


def build_explainers(models: Models, settings: DictConfig, seed: int) -> dict[str, Explainer]:
    """The configured heatmap methods, in table order, skipping networks that were not given."""
    explainers: dict[str, Explainer] = {}
    for method in settings.methods:
        if method == "posthoc" and models.posthoc is not None:
            explainers[method] = PostHocExplainer(models.posthoc)
        elif method == "protopnet" and models.protopnet is not None:
            explainers[method] = ProtoPNetExplainer(models.protopnet)
        elif method == "gradcam":
            explainers[method] = GradCAMExplainer(models.blackbox)
        elif method == "lime":
            explainers[method] = LimeExplainer(models.blackbox, **settings.lime, seed=seed)
    return explainers


def exact(value: float) -> Estimate:
    """A number measured once (not over images): no interval."""
    return Estimate(value, value, value)


def part_scores(
    coverage: PartCoverage, num_classes: int, threshold: float, boot: dict
) -> dict[str, Estimate]:
    """Consistency and stability with their intervals over resampled test images."""

    def consistent(idx: np.ndarray) -> float:
        c = consistency(
            coverage.covered[idx],
            coverage.visible[idx],
            coverage.labels[idx],
            num_classes,
            threshold,
        )
        return float(c.float().mean())

    def stable(idx: np.ndarray) -> float:
        s = stability(
            coverage.covered[idx], coverage.covered_noisy[idx], coverage.labels[idx], num_classes
        )
        return float(s.nanmean())

    n = len(coverage.labels)
    return {
        "consistency": bootstrap_estimate(consistent, n, **boot),
        "stability": bootstrap_estimate(stable, n, **boot),
    }


@torch.no_grad()
def protopnet_terms(
    explainer: ProtoPNetExplainer, image: torch.Tensor, label: int, datamodule, top: int
) -> list[PrototypeTerm]:
    """ProtoPNet's `top` largest w_cj * max sim_j terms for class `label`: high-activation box, pushed patch."""
    similarity = explainer.similarity_maps(image[None])[0]  # (m, h, w)
    terms = explainer.net.last_layer.weight[label] * similarity.flatten(1).max(1).values  # (m,)
    k = explainer.prototypes_per_class
    out = []
    for j in terms.argsort(descending=True)[:top].tolist():
        box = tuple(high_activation_box(similarity[j].cpu(), image.shape[-1]).tolist())
        patch = None
        if explainer.model.projection is not None:
            pushed, (y0, y1, x0, x1) = nearest_patch_image(
                explainer.model, datamodule, j // k, j % k
            )
            patch = pushed[y0:y1, x0:x1]
        out.append(PrototypeTerm(None, box, patch, f"p{j} {float(terms[j]):+.2f}"))
    return out


@torch.no_grad()
def posthoc_terms(
    explainer: PostHocExplainer, image: torch.Tensor, label: int, datamodule, top: int
) -> list[PrototypeTerm]:
    """The post-hoc PPN's `top` largest contributions for class `label`: heatmap and nearest training patch."""
    explanation = explainer.model.explain(image[None], target=label)[0]
    out = []
    for rank in range(min(top, len(explanation.contributions))):
        i = int(explanation.prototype_index[rank])
        patch = None
        if explainer.model.projection is not None:
            pushed, (y0, y1, x0, x1) = nearest_patch_image(explainer.model, datamodule, label, i)
            patch = pushed[y0:y1, x0:x1]
        caption = f"p{i} {float(explanation.contributions[rank]):+.2f}"
        out.append(PrototypeTerm(explanation.upsampled[rank].numpy(), None, patch, caption))
    return out


def faithfulness_subset(num_images: int, wanted: int | None, seed: int) -> np.ndarray:
    """A seeded random subset of test images (sorted) for the per-image heatmap metrics; all when None."""
    if wanted is None or wanted >= num_images:
        return np.arange(num_images)
    return np.sort(np.random.default_rng(seed).choice(num_images, size=wanted, replace=False))


def _joined(pieces: list) -> np.ndarray | torch.Tensor:
    """Every rank's per-image values, concatenated in rank order (= image order)."""
    if isinstance(pieces[0], torch.Tensor):
        return torch.cat(pieces)
    return np.concatenate(pieces)


def gather_images(local: object) -> object:
    """Join a per-image result (array, tensor, or a tuple / dataclass of them) across ranks; a rank
    whose share of the images is empty passes None (every rank must call this the same times)."""
    pieces = [p for p in gather_objects(local) if p is not None]
    first = pieces[0]  # rank 0 always has a share
    if len(pieces) == 1:
        return first
    if isinstance(first, tuple):
        return tuple(_joined([p[i] for p in pieces]) for i in range(len(first)))
    if is_dataclass(first):
        return type(first)(
            **{f.name: _joined([getattr(p, f.name) for p in pieces]) for f in fields(first)}
        )
    return _joined(pieces)


def explain_and_measure(
    explainer: Explainer, images: torch.Tensor, settings: DictConfig
) -> tuple[torch.Tensor, np.ndarray, Faithfulness]:
    """Heatmaps (N, H, W) of the explained model's predicted classes, seconds per image (N,), and
    their deletion/insertion curves."""
    with torch.no_grad():
        targets = explainer.classifier(images).argmax(1)  # RISE explains the predicted class
    maps, seconds = explain_timed(explainer, images, targets, settings.batch_size)
    return maps, seconds, faithfulness(explainer, images, maps, targets, settings.faithfulness)


def run_evaluate(cfg: DictConfig) -> StageResult:
    """Evaluate every method on the test split; write results.md/.csv and figures/, log them.

    Under DDP (`trainer=ddp`, `ddp_cpu`) every rank measures a contiguous share of the images, the
    per-image values are gathered in image order, and rank 0 computes the table and writes it.
    """
    run_dir, datamodule = start_run(cfg)
    datamodule.setup("test")
    settings = cfg.evaluation
    paths = locate(cfg)
    models = load_models(paths, datamodule.num_classes, cfg.trust_file)
    fabric = launch(cfg.trainer)
    rank, world = fabric.global_rank, fabric.world_size
    device = fabric.device if world > 1 else stage_device(cfg)
    for model in (models.blackbox, models.posthoc, models.protopnet):
        if model is not None:
            model.to(device).eval()
    boot = {
        "resamples": settings.bootstrap.resamples,
        "confidence": settings.bootstrap.confidence,
        "seed": cfg.seed,
    }
    estimate = partial(mean_estimate, **boot)

    test_set = datamodule.test_set
    share = contiguous_share(len(test_set), rank, world)  # empty on ranks past the images
    loader = datamodule.subset_loader(test_set, share)
    blackbox_pred, labels = gather_images(
        predict(models.blackbox, loader, device) if len(share) else None
    )
    subset = faithfulness_subset(len(labels), settings.faithfulness.images, cfg.seed)
    mine = subset[contiguous_share(len(subset), rank, world)]
    images = (
        torch.stack([test_set[int(i)]["image"] for i in mine]).to(device) if len(mine) else None
    )
    has_parts = datamodule.num_parts > 0
    half_size = region_half_size(datamodule.image_size, settings.parts.half_size)
    C = datamodule.num_classes

    rows = [
        ResultRow(
            "black box", {"accuracy": estimate(blackbox_pred == labels), "agreement": exact(1.0)}
        )
    ]
    curves: dict[str, Faithfulness] = {}
    heatmaps: dict[str, torch.Tensor] = {}
    explainers = build_explainers(models, settings, cfg.seed)
    for key, explainer in explainers.items():
        log.info("evaluating %s on %d test images", explainer.name, len(labels))
        own_model = key in ("posthoc", "protopnet")
        pred = (
            gather_images(predict(explainer.classifier, loader, device)[0] if len(share) else None)
            if own_model
            else blackbox_pred
        )
        values = {
            "accuracy": estimate(pred == labels),
            "agreement": estimate(pred == blackbox_pred),
        }
        local = explain_and_measure(explainer, images, settings) if images is not None else None
        heatmaps[key], seconds = gather_images(local[:2] if local is not None else None)
        curves[explainer.name] = gather_images(local[2] if local is not None else None)
        values["deletion_auc"] = estimate(curves[explainer.name].deletion_auc)
        values["insertion_auc"] = estimate(curves[explainer.name].insertion_auc)
        values["seconds_per_image"] = estimate(seconds)
        if isinstance(explainer, PrototypeExplainer) and own_model:
            values["prototypes"] = exact(float(C * explainer.prototypes_per_class))
            if has_parts:
                coverage = (
                    part_coverage(
                        explainer,
                        loader,
                        datamodule.num_parts,
                        half_size,
                        settings.parts.noise_std,
                        settings.parts.noise_clip,
                        cfg.seed,
                        device,
                    )
                    if len(share)
                    else None
                )
                values.update(
                    part_scores(gather_images(coverage), C, settings.parts.threshold, boot)
                )
        if key == "posthoc":
            V = models.blackbox.head.weight.detach()
            V_tilde = models.posthoc.prototypes.sum(dim=1).to(V.device)
            values["head_error"] = exact(float((V_tilde - V).norm() / V.norm()))
        rows.append(ResultRow(explainer.name, values))

    if rank != 0:  # rank 0 writes and logs the one table; every rank returns the same metrics
        barrier()  # (rows hold values gathered from all ranks), e.g. for a sweep's objective
        return StageResult("evaluate", run_dir, metrics=headline_metrics(rows))
    notes = [
        f"{len(labels)} test images ({datamodule.root}); deletion/insertion, heatmaps and explanation time on a "
        f"seeded subset of {len(subset)}; seed {cfg.seed}; 95% percentile bootstrap intervals over images "
        f"({settings.bootstrap.resamples} resamples).",
        f"Deletion/insertion (Petsiuk et al. 2018): {settings.faithfulness.steps} steps, substrates "
        f"{settings.faithfulness.deletion_substrate} / {settings.faithfulness.insertion_substrate}, softmax "
        "probability of the class the explained model predicts; Grad-CAM, LIME and the post-hoc PPN explain "
        "the black box, ProtoPNet explains itself.",
        (
            f"Consistency/stability (Huang et al. 2023): region half-size {half_size} px at {datamodule.image_size} "
            f"px, threshold {settings.parts.threshold}, noise std {settings.parts.noise_std} clipped to "
            f"+-{settings.parts.noise_clip}; own-class test images."
            if has_parts
            else "Consistency/stability: not applicable (no part keypoints in this dataset)."
        ),
        "n/a: the metric does not apply to the method. Paths: "
        + ", ".join(f"{k}={v}" for k, v in models.paths.items()),
    ]
    logger = build(cfg.logger)
    logger.log_hyperparams(resolved_container(cfg))
    results_csv = write_csv(rows, run_dir / "results.csv")
    results_md = write_markdown(rows, run_dir / "results.md", notes)
    figures = write_figures(
        run_dir / "figures", datamodule, models, explainers, subset, heatmaps, curves, settings
    )

    logger.log_metrics(
        {f"eval/{row.method}/{key}": e.value for row in rows for key, e in row.values.items()}
    )
    if hasattr(logger, "log_table"):  # W&B: the same table key in every run, so runs line up
        logger.log_table(
            key="evaluation/results",
            columns=columns(),
            data=[list(r.flat().values()) for r in rows],
        )
        logger.log_image(
            key="evaluation/figures",
            images=[str(p) for p in figures],
            caption=[p.stem for p in figures],
        )
    finish_logging(logger)
    barrier()

    log.info("results:\n%s", results_md.read_text())
    return StageResult(
        "evaluate",
        run_dir,
        {"results.md": results_md, "results.csv": results_csv, "figures": run_dir / "figures"},
        headline_metrics(rows),
    )


def headline_metrics(rows: list[ResultRow]) -> dict[str, float]:
    """`<method>/<metric>` of the table's headline columns: what the stage reports (and a sweep reads)."""
    headline = ("accuracy", "consistency", "stability", "deletion_auc", "insertion_auc")
    return {
        f"{row.method}/{key}": row.values[key].value
        for row in rows
        for key in headline
        if key in row.values
    }


def write_figures(
    folder: Path,
    datamodule,
    models: Models,
    explainers: dict[str, Explainer],
    subset: np.ndarray,
    heatmaps: dict[str, torch.Tensor],
    curves: dict[str, Faithfulness],
    settings: DictConfig,
) -> list[Path]:
    """Per-image explanation panels, the deletion/insertion curves and each network's prototype gallery."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [curves_figure(folder / "deletion_insertion.png", curves)]
    posthoc, protopnet = explainers.get("posthoc"), explainers.get("protopnet")
    top = settings.figures.top
    shown_images = subset[: settings.figures.images]
    device = models.blackbox.head.weight.device
    images = torch.stack([datamodule.test_set[int(i)]["image"] for i in shown_images]).to(device)
    with torch.no_grad():
        blackbox_pred = models.blackbox(images).argmax(1).tolist()
        protopnet_pred = protopnet.classifier(images).argmax(1).tolist() if protopnet else []
    for n in range(len(shown_images)):
        image = images[n]
        picture = to_uint8(image, datamodule.mean, datamodule.std)
        label = int(datamodule.test_set[int(subset[n])]["label"])
        names_of = datamodule.records.class_names
        title = f"test image {int(subset[n])}: true {names_of[label]}, black box predicts {names_of[blackbox_pred[n]]}"
        own = (
            protopnet_terms(protopnet, image, protopnet_pred[n], datamodule, top)
            if protopnet
            else []
        )
        post = posthoc_terms(posthoc, image, blackbox_pred[n], datamodule, top) if posthoc else []
        shown = {explainers[k].name: h[n].numpy() for k, h in heatmaps.items()}
        paths.append(
            explanation_figure(
                folder / f"image_{int(subset[n]):05d}.png", picture, title, shown, own, post
            )
        )
    for key, model in (("posthoc", models.posthoc), ("protopnet", models.protopnet)):
        if model is not None and model.projection is not None:
            paths.append(draw_prototype_grid(model, datamodule, folder / f"{key}_prototypes.png"))
    return paths
