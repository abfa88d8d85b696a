"""Models: backbone adapters, the black box, the prototype networks and ProtoPNet.

The names below are imported on first use (PEP 562), so `proto_lightning.models.adapters` and the
post-hoc network, which need only torch, load without Lightning (the Python facade's promise).
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "BACKBONES": "backbones",
    "FeatureBackbone": "backbones",
    "build_backbone": "backbones",
    "BlackBoxNet": "blackbox_net",
    "BlackBoxClassifier": "blackbox",
    "ProtoPNet": "protopnet",
    "ProtoPNetNet": "protopnet",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
