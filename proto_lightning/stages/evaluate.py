"""The evaluate stage: black box, post-hoc PPN, ProtoPNet, Grad-CAM and LIME side by side (docs/method.md, "Metrics")."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from proto_lightning.config import resolved_container
from proto_lightning.distributed import barrier, contiguous_share, gather_images, launch
from proto_lightning.environment import environment_line
from proto_lightning.errors import ConfigKeyError, ConfigValueError
from proto_lightning.evaluation.artifacts import (
    Models,
    key_kind,
    load_models,
    locate,
    posthoc_labels,
    require_projected_rows,
)
from proto_lightning.evaluation.drawing import draw_prototype_grid, nearest_patch_image, to_uint8
from proto_lightning.evaluation.figures import (
    PrototypeTerm,
    confusion_figure,
    curves_figure,
    explanation_figure,
)
from proto_lightning.evaluation.methods import (
    OWN_MODELS,
    ROW_NAMES,
    VARIANT_ROW_NAMES,
    build_explainers,
)
from proto_lightning.evaluation.per_image import MethodValues, RunValues, data_identity
from proto_lightning.evaluation.report import write_report
from proto_lightning.evaluation.scores import (
    Faithfulness,
    PartCoverage,
    explain_and_measure,
    faithfulness_subset,
    part_coverage,
    predict,
    reference_keypoints_of,
)
from proto_lightning.evaluation.table import ResultRow, columns, write_csv, write_markdown
from proto_lightning.explainers import (
    Explainer,
    PostHocExplainer,
    ProtoPNetExplainer,
    PrototypeExplainer,
)
from proto_lightning.explainers.lime import VARIANTS as LIME_VARIANTS
from proto_lightning.loggers import log_figures
from proto_lightning.metrics.faithfulness import SUBSTRATES
from proto_lightning.metrics.part_consistency import (
    PROTOCOLS,
    metric_label,
    part_protocol,
    region_half_size,
)
from proto_lightning.prototypes.boxes import high_activation_box
from proto_lightning.prototypes.network import term_caption
from proto_lightning.settings import require_choice
from proto_lightning.stages.common import (
    StageResult,
    build,
    finish_logging,
    stage_device,
    start_run,
)

log = logging.getLogger(__name__)
PROTOCOL_NOTES = {
    "reference": "EvalProtoPNet's arithmetic: OpenCV bicubic peaks, keypoints by integer arithmetic, "
    "every annotated part kept",
    "scaled": "ours: torch bicubic peaks, half-size scaled with the input, parts leaving the crop dropped",
}


def defining_part_ids(names: list[str] | None, part_names: list[str]) -> list[int] | None:
    """`evaluation.parts.defining_parts` as part ids (1-based, parts.txt order); an unknown name is
    refused with the dataset's part names."""
    if names is None:
        return None
    unknown = [name for name in names if name not in part_names]
    if unknown:
        raise ConfigValueError(
            f"evaluation.parts.defining_parts names {unknown}; this dataset's parts: {part_names}"
        )
    return [part_names.index(name) + 1 for name in names]


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
        out.append(PrototypeTerm(None, box, patch, term_caption(j, float(terms[j]))))
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
        caption = term_caption(i, float(explanation.contributions[rank]))
        out.append(PrototypeTerm(explanation.upsampled[rank].numpy(), None, patch, caption))
    return out


@dataclass
class TestImages:
    """What every method is measured on: this rank's share of the test images (all of them under
    one process), the gathered labels and black-box predictions, and the heatmap subset."""

    share: np.ndarray  # (n_rank,) test-set indices of this rank; empty on ranks past the images
    loader: Iterable  # over `share`
    labels: np.ndarray  # (N,) every test image's label, gathered in image order
    blackbox_pred: np.ndarray  # (N,)
    subset: np.ndarray  # (S,) sorted test-set indices of the heatmap metrics' seeded subset
    images: torch.Tensor | None  # (S_rank, 3, H, W) this rank's part of the subset; None if empty


def test_images(
    datamodule, blackbox: torch.nn.Module, cfg: DictConfig, rank: int, world: int, device
) -> TestImages:
    """Share the test images over the ranks and predict them with the black box."""
    test_set = datamodule.test_set
    share = contiguous_share(len(test_set), rank, world)
    loader = datamodule.subset_loader(test_set, share)
    blackbox_pred, labels = gather_images(predict(blackbox, loader, device) if len(share) else None)
    subset = faithfulness_subset(len(labels), cfg.evaluation.faithfulness.images, cfg.seed)
    mine = subset[contiguous_share(len(subset), rank, world)]
    images = (
        torch.stack([test_set[int(i)]["image"] for i in mine]).to(device) if len(mine) else None
    )
    return TestImages(share, loader, labels, blackbox_pred, subset, images)


@dataclass
class Measured:
    """The table's rows, their per-image values, and per method the gathered deletion/insertion
    curves and heatmaps."""

    rows: list[ResultRow]
    values: RunValues
    curves: dict[str, Faithfulness] = field(default_factory=dict)  # by method name
    heatmaps: dict[str, torch.Tensor] = field(default_factory=dict)  # by method key, (S, H, W)


def bootstrap_settings(cfg: DictConfig) -> dict:
    """Resamples, confidence and seed of the bootstrap intervals."""
    boot = cfg.evaluation.bootstrap
    return {"resamples": boot.resamples, "confidence": boot.confidence, "seed": cfg.seed}


def measure(
    explainers: dict[str, Explainer], models: Models, data: TestImages, datamodule, cfg, device
) -> Measured:
    """Every method's per-image values and row (each metric with its bootstrap interval over the
    images), after the black box's own."""
    parts = cfg.evaluation.parts
    values = RunValues(
        data_identity(datamodule, parts.protocol),
        datamodule.num_classes,
        parts.threshold,
        defining_part_ids(parts.defining_parts, list(datamodule.records.part_names)),
    )
    values.methods["black box"] = MethodValues(
        {"accuracy": data.blackbox_pred == data.labels}, exact={"agreement": 1.0}
    )
    measured = Measured([], values)
    for key, explainer in explainers.items():
        log.info("evaluating %s on %d test images", explainer.name, len(data.labels))
        method, curves, heatmaps = measure_method(
            key, explainer, models, data, datamodule, cfg, device
        )
        values.methods[explainer.name] = method
        measured.curves[explainer.name], measured.heatmaps[key] = curves, heatmaps
    boot = bootstrap_settings(cfg)
    measured.rows = [ResultRow(name, values.estimates(name, **boot)) for name in values.methods]
    return measured


def prediction_scores(explainer: Explainer):
    """What a method predicts with: its `predictor` where it predicts otherwise than the argmax of the
    probabilities it is scored on (KMEx: the nearest prototype), else its classifier."""
    return getattr(explainer, "predictor", explainer.classifier)


def measure_method(
    key: str, explainer: Explainer, models: Models, data: TestImages, datamodule, cfg, device
) -> tuple[MethodValues, Faithfulness, torch.Tensor]:
    """One method's per-image accuracy, agreement, deletion/insertion and cost, and for a prototype
    network its prototype count and part coverage (and the post-hoc PPN's head error)."""
    settings = cfg.evaluation
    own_model = key_kind(key) in OWN_MODELS
    pred = data.blackbox_pred
    if own_model:
        pred = gather_images(
            predict(prediction_scores(explainer), data.loader, device)[0]
            if len(data.share)
            else None
        )
    local = (
        explain_and_measure(explainer, data.images, settings) if data.images is not None else None
    )
    heatmaps, seconds = gather_images(local[:2] if local is not None else None)
    curves = gather_images(local[2] if local is not None else None)
    values = MethodValues(
        {
            "accuracy": pred == data.labels,
            "agreement": pred == data.blackbox_pred,
            "deletion_auc": curves.deletion_auc,
            "insertion_auc": curves.insertion_auc,
            "seconds_per_image": seconds,
        }
    )
    if isinstance(explainer, PrototypeExplainer) and own_model:
        C = datamodule.num_classes
        values.exact["prototypes"] = float(C * explainer.prototypes_per_class)
        values.coverage = prototype_coverage(explainer, data, datamodule, cfg, device)
    if key_kind(key) == "posthoc":  # in float32, the precision of the table's figures
        values.exact["head_error"] = explainer.model.relative_head_error(torch.float32)
    return values, curves, heatmaps


def prototype_coverage(
    explainer: PrototypeExplainer, data: TestImages, datamodule, cfg: DictConfig, device
) -> PartCoverage | None:
    """A prototype network's part coverage of every test image, gathered in image order (for
    consistency, stability and true-part localisation); None without part keypoints."""
    parts = cfg.evaluation.parts
    if datamodule.num_parts == 0:
        return None
    coverage = None
    if len(data.share):
        half_size = region_half_size(datamodule.image_size, parts.half_size, parts.protocol)
        coverage = part_coverage(
            explainer,
            data.loader,
            datamodule.num_parts,
            half_size,
            parts.noise_std,
            parts.noise_clip,
            cfg.seed,
            device,
            parts.protocol,
            reference_keypoints_of(datamodule.test_set) if parts.protocol == "reference" else None,
        )
    return gather_images(coverage)


def table_notes(
    cfg: DictConfig, datamodule, data: TestImages, models: Models, run_dir: Path
) -> list[str]:
    """What results.md says under the table: images, protocols, settings, and the paths relative to
    the run folder (the table is read on other machines)."""
    settings = cfg.evaluation

    def here(path: Path | str) -> str:
        return os.path.relpath(Path(path).resolve(), run_dir.resolve())

    parts = settings.parts
    half_size = region_half_size(datamodule.image_size, parts.half_size, parts.protocol)
    return [
        f"{len(data.labels)} test images ({here(datamodule.root)}); deletion/insertion, heatmaps and explanation time on a "
        f"seeded subset of {len(data.subset)}; seed {cfg.seed}; 95% percentile bootstrap intervals over images "
        f"({settings.bootstrap.resamples} resamples).",
        f"Deletion/insertion (Petsiuk et al. 2018): {settings.faithfulness.steps} steps, substrates "
        f"{settings.faithfulness.deletion_substrate} / {settings.faithfulness.insertion_substrate}, softmax "
        "probability of the class the explained model predicts; Grad-CAM, LIME and the post-hoc PPN explain "
        "the black box, ProtoPNet and KMEx explain themselves"
        + (
            " (KMEx's probabilities come from similarities log((d + 1) / (d + eps)) that differ "
            "little between classes, so its curves stay near 1 / C)."
            if models.kmex is not None
            else "."
        ),
        (
            f"Consistency/stability (Huang et al. 2023), protocol `{parts.protocol}` "
            f"({PROTOCOL_NOTES[parts.protocol]}): region half-size {half_size} px at {datamodule.image_size} "
            f"px, threshold {parts.threshold}, noise std {parts.noise_std} clipped to "
            f"+-{parts.noise_clip}; own-class test images."
            if datamodule.num_parts > 0
            else "Consistency/stability: not applicable (no part keypoints in this dataset)."
        ),
        "n/a: the metric does not apply to the method. Paths: "
        + ", ".join(f"{k}={here(v)}" for k, v in models.paths.items()),
        environment_line(),
    ]


def claim_note(claims: Mapping | None, rows: list[ResultRow], protocol: str) -> str | None:
    """The paper's claimed lead of post-hoc PPN (points over the best prior part-prototype network)
    beside the measured post-hoc PPN - ProtoPNet difference, for an experiment that states claims."""
    if not claims:
        return None
    by_method = {row.method: row.values for row in rows}
    posthoc, protopnet = by_method.get("Post-hoc PPN", {}), by_method.get("ProtoPNet", {})
    said = []
    for metric in ("consistency", "stability"):
        if claims.get(metric) is None:
            continue
        measured = "not measured (needs both networks and part keypoints)"
        if metric in posthoc and metric in protopnet:
            gap = 100 * (posthoc[metric].value - protopnet[metric].value)
            measured = f"measured here over ProtoPNet {gap:+.1f} (protocol `{protocol}`)"
        said.append(f"{metric} +{claims[metric]} points claimed, {measured}")
    return (
        "The paper's claim for this backbone (Tan, Zhou & Chen 2024, via the HKUST SMART Lab post "
        "of 2024-06-08; over the best prior part-prototype network, base EvalProtoPNet protocol): "
        + "; ".join(said)
        + "."
    )


def report(
    cfg: DictConfig,
    run_dir: Path,
    datamodule,
    models: Models,
    explainers: dict[str, Explainer],
    data: TestImages,
    measured: Measured,
) -> StageResult:
    """Rank 0: write results.md/.csv and figures/, and log the table and figures."""
    rows = measured.rows
    logger = build(cfg.logger)
    logger.log_hyperparams(resolved_container(cfg))
    protocol = cfg.evaluation.parts.protocol
    results_csv = write_csv(rows, run_dir / "results.csv", protocol)
    per_image = measured.values.save(run_dir / "per_image.pt")
    notes = table_notes(cfg, datamodule, data, models, run_dir)
    claim = claim_note(cfg.get("paper_claims"), rows, cfg.evaluation.parts.protocol)
    if claim is not None:
        log.info(claim)
        notes.append(claim)
    results_md = write_markdown(rows, run_dir / "results.md", notes, protocol)
    figures = write_figures(
        run_dir / "figures",
        datamodule,
        models,
        explainers,
        data.subset,
        measured.heatmaps,
        measured.curves,
        cfg.evaluation,
    )
    class_names = list(datamodule.records.class_names)
    confusion = run_dir / "figures" / "confusion_matrix.png"
    figures.append(confusion_figure(confusion, data.labels, data.blackbox_pred, class_names))
    logger.log_metrics(
        {
            f"eval/{row.method}/{metric_label(key, protocol)}": e.value
            for row in rows
            for key, e in row.values.items()
        }
    )
    if hasattr(logger, "log_table"):  # W&B: the same table key in every run, so runs line up
        data_rows = [[*r.flat().values(), protocol] for r in rows]  # columns() ends with it
        logger.log_table(key="evaluation/results", columns=columns(), data=data_rows)
        log_figures(logger, "evaluation/figures", figures)
    finish_logging(logger)
    config_yaml = OmegaConf.to_yaml(resolved_container(cfg))
    title = f"proto-lightning evaluation: {run_dir.name}"
    page = write_report(run_dir / "report.html", rows, notes, figures, config_yaml, title)
    log.info("results:\n%s", results_md.read_text())
    artifacts = {
        "results.md": results_md,
        "results.csv": results_csv,
        "per_image.pt": per_image,
        "figures": run_dir / "figures",
        "report.html": page,
    }
    return StageResult("evaluate", run_dir, artifacts, headline_metrics(rows, protocol))


def check_config(cfg: DictConfig) -> None:
    """Every evaluation setting, before any model is read: the methods, the substrates, LIME's
    variant; the part protocol resolved for the data's size (`auto`) or refused (`part_protocol`)."""
    settings = cfg.evaluation
    unknown = [m for m in settings.methods if m not in ROW_NAMES]
    if unknown:
        raise ConfigKeyError(
            f"evaluation.methods names {unknown}; known methods: {sorted(ROW_NAMES)}"
        )
    for key in ("deletion_substrate", "insertion_substrate"):
        require_choice(settings.faithfulness[key], SUBSTRATES, f"evaluation.faithfulness.{key}")
    require_choice(settings.lime.variant, LIME_VARIANTS, "evaluation.lime.variant")
    with open_dict(cfg):  # auto resolved for the data's size, or reference refused there
        settings.parts.protocol = part_protocol(settings.parts.protocol, cfg.data.image_size)


def run_evaluate(cfg: DictConfig) -> StageResult:
    """Evaluate every method on the test split; write results.md/.csv and figures/, log them:
    locate and load -> share the images -> explain and measure -> tabulate, draw and log (rank 0).

    Under DDP (`trainer=ddp`, `ddp_cpu`) every rank measures a contiguous share of the images, the
    per-image values are gathered in image order, and rank 0 computes the table and writes it.
    """
    check_config(cfg)
    run_dir, datamodule = start_run(cfg, unused=("callbacks",))
    datamodule.setup("test")
    defining_part_ids(cfg.evaluation.parts.defining_parts, list(datamodule.records.part_names))
    models = load_models(locate(cfg), datamodule.num_classes, cfg.trust_file)
    require_projected_rows(models, datamodule.push_set.rows)
    fabric = launch(cfg.trainer)
    rank, world = fabric.global_rank, fabric.world_size
    device = fabric.device if world > 1 else stage_device(cfg)
    for model in models.networks():
        model.to(device).eval()
    data = test_images(datamodule, models.blackbox, cfg, rank, world, device)
    normalisation = (datamodule.mean, datamodule.std)
    explainers = build_explainers(models, cfg.evaluation, cfg.seed, normalisation)
    measured = measure(explainers, models, data, datamodule, cfg, device)
    result = StageResult(
        "evaluate", run_dir, metrics=headline_metrics(measured.rows, cfg.evaluation.parts.protocol)
    )
    if rank == 0:  # rank 0 writes and logs the one table; every rank returns the same metrics
        result = report(cfg, run_dir, datamodule, models, explainers, data, measured)
    barrier()
    return result


HEADLINE = (
    "accuracy",
    "consistency",
    "stability",
    "deletion_auc",
    "insertion_auc",
    "part_localisation",
    "defining_parts",
)


def headline_metrics(rows: list[ResultRow], protocol: str) -> dict[str, float]:
    """`<method>/<metric>` of the table's headline columns: what the stage reports (and a sweep
    reads); a part metric's key names a protocol other than the reference's (`metric_label`)."""
    return {
        f"{row.method}/{metric_label(key, protocol)}": row.values[key].value
        for row in rows
        for key in HEADLINE
        if key in row.values
    }


def metric_names(methods: list[str], posthoc_labels: Sequence[str] = ()) -> set[str]:
    """Every metric name an evaluation of `methods` can report (a method's row may lack some), under
    either protocol; `posthoc_labels` name several post-hoc networks' rows (`posthoc=[...]`)."""
    rows = ["black box", *(ROW_NAMES[m] for m in methods if m in ROW_NAMES)]
    rows += [name for m in methods for name in VARIANT_ROW_NAMES.get(m, [])]
    rows += [PostHocExplainer.row_name(label) for label in posthoc_labels if label]
    return {
        f"{row}/{metric_label(key, protocol)}"
        for row in rows
        for key in HEADLINE
        for protocol in PROTOCOLS
    }


def reported_metrics(cfg: DictConfig) -> set[str]:
    """The stage's metric names with this config, known before it runs (see `objective`)."""
    labels = posthoc_labels(cfg.get("posthoc"))
    return metric_names(list(cfg.evaluation.methods), list(labels))


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
    posthoc = next((e for k, e in explainers.items() if key_kind(k) == "posthoc"), None)
    protopnet = explainers.get("protopnet")
    top = settings.figures.top
    shown_images = subset[: settings.figures.images]
    device = models.blackbox.head.weight.device
    images = torch.stack([datamodule.test_set[int(i)]["image"] for i in shown_images]).to(device)
    with torch.no_grad():
        blackbox_pred = models.blackbox(images).argmax(1).tolist()
        predicted = {  # RISE's rule: each method explains its model's predicted class
            k: explainers[k].classifier(images).argmax(1).tolist()
            if key_kind(k) in OWN_MODELS
            else blackbox_pred
            for k in heatmaps
        }
    for n in range(len(shown_images)):
        image = images[n]
        picture = to_uint8(image, datamodule.mean, datamodule.std)
        label = int(datamodule.test_set[int(subset[n])]["label"])
        names_of = datamodule.records.class_names
        title = f"test image {int(subset[n])}: true {names_of[label]}, black box predicts {names_of[blackbox_pred[n]]}"
        own = (
            protopnet_terms(protopnet, image, predicted["protopnet"][n], datamodule, top)
            if protopnet
            else []
        )
        post = posthoc_terms(posthoc, image, blackbox_pred[n], datamodule, top) if posthoc else []
        shown = {explainers[k].name: h[n].numpy() for k, h in heatmaps.items()}
        explained = {explainers[k].name: names_of[predicted[k][n]] for k in heatmaps}
        paths.append(
            explanation_figure(
                folder / f"image_{int(subset[n]):05d}.png",
                picture,
                title,
                shown,
                own,
                post,
                explained,
            )
        )
    named = {f"posthoc-{label}" if label else "posthoc": m for label, m in models.posthocs.items()}
    for key, model in (*named.items(), ("protopnet", models.protopnet), ("kmex", models.kmex)):
        if model is not None and model.projection is not None:
            paths.append(draw_prototype_grid(model, datamodule, folder / f"{key}_prototypes.png"))
    return paths
