"""The quick-start: every stage in turn on the generated part dataset (black box, decomposition, ProtoPNet, evaluation)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from proto_lightning.stages.blackbox import run_blackbox
from proto_lightning.stages.common import StageResult, stage_config
from proto_lightning.stages.decompose import run_decompose
from proto_lightning.stages.evaluate import run_evaluate
from proto_lightning.stages.protopnet import run_protopnet


def run_demo(cfg: DictConfig) -> StageResult:
    """Run the quick-start chain; the summary lists every stage's artifacts and headline metrics."""
    blackbox = run_blackbox(stage_config(cfg, "blackbox"))
    best = str(blackbox.artifacts["best checkpoint"])
    decompose = run_decompose(
        stage_config(
            cfg,
            "decompose",
            model=cfg.posthoc,
            callbacks=cfg.decompose_callbacks,
            blackbox_ckpt=best,
        )
    )
    protopnet_model = OmegaConf.merge(cfg.protopnet, {"init_from_blackbox": best})
    whole_plan = OmegaConf.merge(cfg.trainer, {"max_epochs": None})  # the schedule sets the length
    protopnet = run_protopnet(
        stage_config(cfg, "protopnet", model=protopnet_model, trainer=whole_plan)
    )
    evaluate = run_evaluate(
        stage_config(cfg, "evaluate", from_run=str(cfg.run_dir), posthoc=None)
    )  # the demo's own `posthoc` is the decomposition's settings, not an artifact path
    report = evaluate.artifacts.get("report.html")
    closing = f"open the report: {report}" if report is not None else None
    result = StageResult("demo", Path(cfg.run_dir), closing=closing)
    for stage in (blackbox, decompose, protopnet, evaluate):
        result.artifacts.update({f"{stage.stage} {k}": v for k, v in stage.artifacts.items()})
        result.metrics.update(
            {f"{stage.stage} {k}": v for k, v in stage.metrics.items() if "/" in k}
        )
    return result
