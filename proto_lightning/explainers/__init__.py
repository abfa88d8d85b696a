"""Heatmap explainers behind one interface: Grad-CAM, LIME, the post-hoc PPN, ProtoPNet and KMEx.

The names below are imported on first use (PEP 562), so `explainers.base` loads without captum,
LIME or Lightning (the post-hoc network and the Python facade need only its `to_input_size`).
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "Explainer": "base",
    "PrototypeExplainer": "base",
    "to_input_size": "base",
    "GradCAMExplainer": "gradcam",
    "LimeExplainer": "lime",
    "KMExExplainer": "prototypes",
    "PostHocExplainer": "prototypes",
    "ProtoPNetExplainer": "prototypes",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
