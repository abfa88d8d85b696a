"""Heatmap explainers behind one interface: Grad-CAM, LIME, the post-hoc PPN, ProtoPNet and KMEx."""

from proto_lightning.explainers.base import Explainer, PrototypeExplainer, to_input_size
from proto_lightning.explainers.gradcam import GradCAMExplainer
from proto_lightning.explainers.lime import LimeExplainer
from proto_lightning.explainers.prototypes import (
    KMExExplainer,
    PostHocExplainer,
    ProtoPNetExplainer,
)

__all__ = [
    "Explainer",
    "GradCAMExplainer",
    "KMExExplainer",
    "LimeExplainer",
    "PostHocExplainer",
    "PrototypeExplainer",
    "ProtoPNetExplainer",
    "to_input_size",
]
