"""The quick-start: every stage in turn on the generated part dataset (black box, decomposition, ProtoPNet, evaluation)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from proto_lightning.stages.blackbox import run_blackbox
from proto_lightning.stages.common import StageResult
from proto_lightning.stages.decompose import run_decompose
from proto_lightning.stages.evaluate import run_evaluate
from proto_lightning.stages.protopnet import run_protopnet


def stage_config(cfg: DictConfig, stage: str, **replace) -> DictConfig:
    """The demo's config re-targeted at one stage, in a sub-folder of the demo's run folder.

    Every stage of one demo run logs to the same W&B group, `<group>-<run folder name>`, so the
    dashboard shows the chain's runs (one per stage) together.
    """
    sub = OmegaConf.create(
        OmegaConf.to_container(cfg, resolve=False)
    )  # ${run_dir} follows the new folder
    with open_dict(sub):
        sub.stage = stage
        sub.run_dir = f"{cfg.run_dir}/{stage}"
        sub.group = f"{cfg.group}-{Path(cfg.run_dir).name}"
        for key, value in replace.items():
            sub[key] = value
    return sub


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
    protopnet = run_protopnet(stage_config(cfg, "protopnet", model=protopnet_model))
    evaluate = run_evaluate(
        stage_config(cfg, "evaluate", from_run=str(cfg.run_dir), posthoc=None)
    )  # the demo's own `posthoc` is the decomposition's settings, not an artifact path
    result = StageResult("demo", Path(cfg.run_dir))
    for stage in (blackbox, decompose, protopnet, evaluate):
        result.artifacts.update({f"{stage.stage} {k}": v for k, v in stage.artifacts.items()})
        result.metrics.update(
            {f"{stage.stage} {k}": v for k, v in stage.metrics.items() if "/" in k}
        )
    return result
