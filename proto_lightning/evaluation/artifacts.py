"""Find and load what the evaluation compares: the black box, the post-hoc PPN and ProtoPNet.

Paths come from the config (`blackbox_ckpt`, `posthoc`, `protopnet_ckpt`, `kmex_artifact`) or from a run folder of
`make demo` / `proto-lightning demo` (`from_run`), whose stage sub-folders hold them. A missing
file names the stage that makes it; a model of another class count than the data is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from proto_lightning.errors import MissingArtifactError
from proto_lightning.models import BlackBoxClassifier, BlackBoxNet
from proto_lightning.models.files import require_class_count
from proto_lightning.models.kmex import KMExNetwork
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.models.protopnet import ProtoPNet

MAKES = {
    "blackbox_ckpt": "proto-lightning blackbox",
    "posthoc": "proto-lightning decompose blackbox_ckpt=<black-box checkpoint>",
    "protopnet_ckpt": "proto-lightning protopnet",
    "kmex_artifact": "proto-lightning decompose kmex.enabled=true",
}


@dataclass
class Models:
    """The evaluated models; the post-hoc PPN, ProtoPNet and KMEx are optional."""

    blackbox: BlackBoxNet
    posthoc: PostHocPrototypeNetwork | None
    protopnet: ProtoPNet | None
    paths: dict[str, Path]
    kmex: KMExNetwork | None = None

    def networks(self) -> list:
        """Every loaded model, the black box first."""
        return [
            m for m in (self.blackbox, self.posthoc, self.protopnet, self.kmex) if m is not None
        ]


def _from_run(run: Path) -> dict[str, Path]:
    """The demo's stage outputs in a run folder; the best black-box checkpoint, ProtoPNet's final one,
    and KMEx's artifact when decompose made one."""
    best = sorted((run / "blackbox" / "checkpoints").glob("best-*.ckpt"))
    paths = {
        "blackbox_ckpt": best[-1] if best else run / "blackbox" / "checkpoints" / "best-*.ckpt",
        "posthoc": run / "decompose" / "posthoc.pt",
        "protopnet_ckpt": run / "protopnet" / "checkpoints" / "last.ckpt",
    }
    if (run / "decompose" / "kmex.pt").is_file():
        paths["kmex_artifact"] = run / "decompose" / "kmex.pt"
    return paths


def locate(cfg: DictConfig) -> dict[str, Path]:
    """Paths of the artifacts to evaluate; every one given must exist (the error names the stage to run)."""
    if cfg.from_run is not None:
        run = Path(cfg.from_run)
        if not run.is_dir():
            raise MissingArtifactError(f"from_run={run} is not a folder; run `make demo` first")
        paths = _from_run(run)
        paths.update({k: Path(cfg[k]) for k in MAKES if cfg.get(k) is not None})
    else:
        paths = {k: Path(cfg[k]) for k in MAKES if cfg.get(k) is not None}
    if "blackbox_ckpt" not in paths:
        raise MissingArtifactError(
            "evaluate needs blackbox_ckpt=<checkpoint> or from_run=<demo run folder>"
        )
    for key, path in paths.items():
        if not path.is_file():
            raise MissingArtifactError(
                f"{key}: {path} does not exist; make it with `{MAKES[key]}` (or pass {key}=<path>)"
            )
    return paths


def load_models(paths: dict[str, Path], num_classes: int, trust_file: bool = False) -> Models:
    """Load every located model on CPU (as data unless `trust_file`) and check it classifies the
    data's classes."""
    blackbox = BlackBoxClassifier.load_checkpoint(
        paths["blackbox_ckpt"], trust_file=trust_file
    ).net.eval()
    require_class_count(
        "black box", paths["blackbox_ckpt"], blackbox.head.out_features, num_classes, "evaluate"
    )
    posthoc = protopnet = None
    if "posthoc" in paths:
        posthoc = PostHocPrototypeNetwork.load(
            paths["posthoc"], blackbox=blackbox, trust_file=trust_file
        )
        require_class_count(
            "post-hoc artifact", paths["posthoc"], posthoc.num_classes, num_classes, "evaluate"
        )
    if "protopnet_ckpt" in paths:
        protopnet = ProtoPNet.load_checkpoint(paths["protopnet_ckpt"], trust_file=trust_file)
        require_class_count(
            "ProtoPNet", paths["protopnet_ckpt"], protopnet.num_classes, num_classes, "evaluate"
        )
    kmex = (
        KMExNetwork.load(paths["kmex_artifact"], blackbox=blackbox)
        if "kmex_artifact" in paths
        else None
    )
    return Models(blackbox, posthoc, protopnet, paths, kmex)
