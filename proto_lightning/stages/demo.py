"""The quick-start: every stage in turn on the generated part dataset (black box, decomposition, ProtoPNet)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from proto_lightning.stages.blackbox import run_blackbox
from proto_lightning.stages.common import StageResult
from proto_lightning.stages.decompose import run_decompose
from proto_lightning.stages.protopnet import run_protopnet


def stage_config(cfg: DictConfig, stage: str, **replace) -> DictConfig:
    """The demo's config re-targeted at one stage, in a sub-folder of the demo's run folder."""
    sub = OmegaConf.create(
        OmegaConf.to_container(cfg, resolve=False)
    )  # ${run_dir} follows the new folder
    with open_dict(sub):
        sub.stage = stage
        sub.run_dir = f"{cfg.run_dir}/{stage}"
        for key, value in replace.items():
            sub[key] = value
    return sub


def run_demo(cfg: DictConfig) -> StageResult:
    """Run the quick-start chain; the summary lists every stage's artifacts and headline metrics."""
    blackbox = run_blackbox(stage_config(cfg, "blackbox"))
    decompose = run_decompose(
        stage_config(
            cfg,
            "decompose",
            model=cfg.posthoc,
            callbacks=cfg.decompose_callbacks,
            blackbox_ckpt=str(blackbox.artifacts["best checkpoint"]),
        )
    )
    protopnet = run_protopnet(stage_config(cfg, "protopnet", model=cfg.protopnet))
    result = StageResult("demo", Path(cfg.run_dir))
    for stage in (blackbox, decompose, protopnet):
        result.artifacts.update({f"{stage.stage} {k}": v for k, v in stage.artifacts.items()})
        result.metrics.update(
            {f"{stage.stage} {k}": v for k, v in stage.metrics.items() if "/" in k}
        )
    return result
