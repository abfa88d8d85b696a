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
# name -> (models, settings, seed, normalisation) -> the method's explainers by row key: none when
# its network was not given, one per network for the post-hoc PPNs (`posthoc`, `posthoc[<label>]`)
EXPLAINERS: dict[
    str, Callable[[Models, Mapping[str, Any], int, Normalisation], dict[str, Explainer]]
] = {
    "posthoc": lambda models, settings, seed, norm: {
        posthoc_key(label): PostHocExplainer(network, label)
        for label, network in models.posthocs.items()
    },
    "protopnet": lambda models, settings, seed, norm: (
        {"protopnet": ProtoPNetExplainer(models.protopnet)} if models.protopnet is not None else {}
    ),
    "kmex": lambda models, settings, seed, norm: (
        {"kmex": KMExExplainer(models.kmex)} if models.kmex is not None else {}
    ),
    "gradcam": lambda models, settings, seed, norm: {"gradcam": GradCAMExplainer(models.blackbox)},
    "lime": lambda models, settings, seed, norm: {
        "lime": LimeExplainer(
            models.blackbox, **settings["lime"], mean=norm[0], std=norm[1], seed=seed
        )
    },
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
    built: dict[str, Explainer] = {}
    for m in methods:
        built.update(EXPLAINERS[m](models, settings, seed, normalisation))
    return built


# rows a method's named variants add (`evaluation.lime.variant=quick`: "LIME (quick)")
VARIANT_ROW_NAMES = {"lime": [f"{LimeExplainer.name} (quick)"]}

# the methods that classify with their own model (the others explain the black box's decisions)
OWN_MODELS = ("posthoc", "protopnet", "kmex")
