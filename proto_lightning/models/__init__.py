"""Models: backbone adapters, the black box, the prototype networks and ProtoPNet.

The names below are imported on first use (PEP 562), so `proto_lightning.models.adapters` and the
post-hoc network, which need only torch, load without Lightning (the Python facade's promise).
"""

from __future__ import annotations

from proto_lightning.lazy import lazy_names

_SOURCES = {
    "BACKBONES": ".backbones",
    "FeatureBackbone": ".backbones",
    "build_backbone": ".backbones",
    "BlackBoxNet": ".blackbox_net",
    "BlackBoxClassifier": ".blackbox",
    "ProtoPNet": ".protopnet",
    "ProtoPNetNet": ".protopnet",
}


__getattr__, __all__ = lazy_names(__name__, _SOURCES)
