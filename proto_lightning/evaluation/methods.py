"""The evaluated methods by name (`evaluation.methods`), a registry as `models.BACKBONES` is."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proto_lightning.errors import ConfigKeyError
from proto_lightning.evaluation.artifacts import Models, posthoc_key
from proto_lightning.explainers import (
    Explainer,
    GradCAMExplainer,
    KMExExplainer,
    LimeExplainer,
    PostHocExplainer,
    ProtoPNetExplainer,
)

# the data's normalisation (mean, std), which LIME undoes for the `lime` package
Normalisation = tuple[Sequence[float], Sequence[float]]
# name -> (models, settings, seed, normalisation) -> the method's explainer, or None when its
# network was not given
EXPLAINERS: dict[
    str, Callable[[Models, Mapping[str, Any], int, Normalisation], Explainer | None]
] = {
    "posthoc": lambda models, settings, seed, norm: None,  # one per network: `posthoc_explainers`
    "protopnet": lambda models, settings, seed, norm: (
        ProtoPNetExplainer(models.protopnet) if models.protopnet is not None else None
    ),
    "kmex": lambda models, settings, seed, norm: (
        KMExExplainer(models.kmex) if models.kmex is not None else None
    ),
    "gradcam": lambda models, settings, seed, norm: GradCAMExplainer(models.blackbox),
    "lime": lambda models, settings, seed, norm: LimeExplainer(
        models.blackbox, **settings["lime"], mean=norm[0], std=norm[1], seed=seed
    ),
}


# name -> the method's row name in the table (LIME's quick variant: "LIME (quick)")
ROW_NAMES = {
    "posthoc": PostHocExplainer.name,
    "protopnet": ProtoPNetExplainer.name,
    "kmex": KMExExplainer.name,
    "gradcam": GradCAMExplainer.name,
    "lime": LimeExplainer.name,
}


def build_explainers(
    models: Models, settings: Mapping[str, Any], seed: int, normalisation: Normalisation
) -> dict[str, Explainer]:
    """The methods of `settings["methods"]`, in table order, skipping networks that were not given;
    an unknown name is refused with the known ones."""
    methods: Sequence[str] = settings["methods"]
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown:
        raise ConfigKeyError(
            f"evaluation.methods names {unknown}; known methods: {sorted(EXPLAINERS)}"
        )
    built = {}
    for m in methods:
        if m == "posthoc":
            built.update(posthoc_explainers(models))
        else:
            built[m] = EXPLAINERS[m](models, settings, seed, normalisation)
    return {m: explainer for m, explainer in built.items() if explainer is not None}


def posthoc_explainers(models: Models) -> dict[str, Explainer]:
    """A row per post-hoc PPN: key `posthoc` (one network) or `posthoc[<label>]` (several)."""
    return {
        posthoc_key(label): PostHocExplainer(network, label)
        for label, network in models.posthocs.items()
    }


def method_kind(key: str) -> str:
    """The `evaluation.methods` name of an explainer's key (`posthoc[k3]` -> `posthoc`)."""
    return key.split("[", 1)[0]


# rows a method's named variants add (`evaluation.lime.variant=quick`: "LIME (quick)")
VARIANT_ROW_NAMES = {"lime": [f"{LimeExplainer.name} (quick)"]}

# the methods that classify with their own model (the others explain the black box's decisions)
OWN_MODELS = ("posthoc", "protopnet", "kmex")
