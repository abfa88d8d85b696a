"""proto-lightning: post-hoc part-prototype networks, in Python and as PyTorch Lightning experiments.

    from proto_lightning import PostHocPPN
    ppn = PostHocPPN(model, prototypes_per_class=3).fit(train_loader)

The public names load on first use (PEP 562): the facade imports neither Hydra, W&B nor Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SOURCES = {
    "PostHocPPN": "proto_lightning.posthoc_ppn",
    "NotFittedError": "proto_lightning.posthoc_ppn",
    "PreprocessingMismatchError": "proto_lightning.posthoc_ppn",
    "Preprocessing": "proto_lightning.models.adapters",
    "NotDecomposableError": "proto_lightning.models.timm_backbones",
    "NMFSettings": "proto_lightning.prototypes.decomposition",
    "RefinementSettings": "proto_lightning.prototypes.decomposition",
    "ProjectionSettings": "proto_lightning.prototypes.projection",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_SOURCES[name]), name)
