"""Heatmap explainers behind one interface: Grad-CAM, LIME, the post-hoc PPN, ProtoPNet and KMEx.

The names below are imported on first use (PEP 562), so `explainers.base` loads without captum,
LIME or Lightning (the post-hoc network and the Python facade need only its `to_input_size`).
"""

from __future__ import annotations

from proto_lightning.lazy import lazy_names

_SOURCES = {
    "Explainer": ".base",
    "PrototypeExplainer": ".base",
    "to_input_size": ".base",
    "GradCAMExplainer": ".gradcam",
    "LimeExplainer": ".lime",
    "KMExExplainer": ".prototypes",
    "PostHocExplainer": ".prototypes",
    "ProtoPNetExplainer": ".prototypes",
}


__getattr__, __all__ = lazy_names(__name__, _SOURCES)
