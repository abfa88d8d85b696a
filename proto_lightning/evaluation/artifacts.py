"""Find and load what the evaluation compares: the black box, the post-hoc PPN and ProtoPNet.

Paths come from the config (`blackbox_ckpt`, `posthoc`, `protopnet_ckpt`, `kmex_artifact`) or from a run folder of
`make demo` / `proto-lightning demo` (`from_run`), whose stage sub-folders hold them. A missing
file names the stage that makes it; a model of another class count than the data is refused.
`posthoc` may name several networks: a list of paths (rows named by where the paths differ) or a
mapping `{name: path}`; each is a row `Post-hoc PPN (<name>)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from proto_lightning.errors import ConfigValueError, MissingArtifactError
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
    """The evaluated models; the post-hoc PPNs (by row label, "" for a single one), ProtoPNet and
    KMEx are optional."""

    blackbox: BlackBoxNet
    posthocs: dict[str, PostHocPrototypeNetwork]
    protopnet: ProtoPNet | None
    paths: dict[str, Path]
    kmex: KMExNetwork | None = None

    @property
    def posthoc(self) -> PostHocPrototypeNetwork | None:
        """The first post-hoc PPN (the figures' and the paper claim's), None without one."""
        return next(iter(self.posthocs.values()), None)

    def networks(self) -> list:
        """Every loaded model, the black box first."""
        models = (self.blackbox, *self.posthocs.values(), self.protopnet, self.kmex)
        return [m for m in models if m is not None]


def require_projected_rows(models: Models, push_rows: np.ndarray) -> None:
    """Every prototype network was projected onto images of this run's training split; one made
    with other data settings (another `seed` picks another validation split) is refused, naming the
    file, before any image is explained."""
    named = {posthoc_key(k): m for k, m in models.posthocs.items()}
    named.update({"protopnet_ckpt": models.protopnet, "kmex_artifact": models.kmex})
    for key, model in named.items():
        projection = getattr(model, "projection", None)
        if projection is None:
            continue
        rows = np.asarray(projection.rows)
        missing = np.setdiff1d(rows[rows >= 0], push_rows)
        if len(missing):
            raise ConfigValueError(
                f"{key} {models.paths.get(key, '')} was projected onto training images that are not "
                f"in this run's training split (dataset row {int(missing[0])}, and "
                f"{len(missing) - 1} more): evaluate it with the data settings of the run that made "
                "it (the same data.root, data.val_fraction and seed)"
            )


def posthoc_key(label: str) -> str:
    """The key of a post-hoc network (in `paths`, and of its explainer): `posthoc`, or
    `posthoc[<label>]` for one of several."""
    return f"posthoc[{label}]" if label else "posthoc"


def key_kind(key: str) -> str:
    """What a key names, without its label: `posthoc[k3]` -> `posthoc` (the config key, the
    `evaluation.methods` name)."""
    return key.split("[", 1)[0]


def key_label(key: str) -> str:
    """The label of a key, "" for none: `posthoc[k3]` -> `k3` (`posthoc_key`'s inverse)."""
    return key[len(key_kind(key)) + 1 : -1] if "[" in key else ""


def posthoc_labels(value) -> dict[str, Path]:
    """`posthoc=` as {row label: path}: a path ("" label), a mapping, or a list labelled by the
    parts of the paths that differ (`runs/k2/posthoc.pt`, `runs/k3/posthoc.pt`: k2, k3)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value is None:
        return {}
    if isinstance(value, str | Path):
        return {"": Path(value)}
    if isinstance(value, Mapping):
        return {str(k): Path(v) for k, v in value.items()}
    paths = [Path(v) for v in value]
    if len(set(paths)) < len(paths):
        raise ConfigValueError(f"posthoc lists a file twice: {[str(p) for p in paths]}")
    if len(paths) == 1:
        return {"": paths[0]}
    parts = [p.parts for p in paths]
    shortest = min(map(len, parts))
    # path parts shared by all at the start (`same_head`) and at the end (`same_tail`)
    same_head = next((i for i in range(shortest) if len({q[i] for q in parts}) > 1), 0)
    same_tail = next((i for i in range(shortest) if len({q[-1 - i] for q in parts}) > 1), 0)
    labels = ["/".join(q[same_head : len(q) - same_tail]) or q[-1] for q in parts]
    return dict(zip(labels, paths, strict=True))


def _given(cfg: DictConfig) -> dict[str, Path]:
    """The artifact paths the config names (several post-hoc PPNs under `posthoc[<label>]`)."""
    paths = {k: Path(cfg[k]) for k in MAKES if k != "posthoc" and cfg.get(k) is not None}
    paths.update({posthoc_key(k): v for k, v in posthoc_labels(cfg.get("posthoc")).items()})
    return paths


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
        given = _given(cfg)
        if any(key_kind(k) == "posthoc" for k in given):
            paths.pop("posthoc")
        paths.update(given)
    else:
        paths = _given(cfg)
    if "blackbox_ckpt" not in paths:
        raise MissingArtifactError(
            "evaluate needs blackbox_ckpt=<checkpoint> or from_run=<demo run folder>"
        )
    for key, path in paths.items():
        if not path.is_file():
            raise MissingArtifactError(
                f"{key}: {path} does not exist; make it with `{MAKES[key_kind(key)]}` "
                f"(or pass {key_kind(key)}=<path>)"
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
    posthocs, protopnet = {}, None
    for key, path in paths.items():
        if key_kind(key) != "posthoc":
            continue
        posthoc = PostHocPrototypeNetwork.load(path, blackbox=blackbox, trust_file=trust_file)
        require_class_count("post-hoc artifact", path, posthoc.num_classes, num_classes, "evaluate")
        posthocs[key_label(key)] = posthoc
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
    return Models(blackbox, posthocs, protopnet, paths, kmex)
