"""proto-lightning: post-hoc part-prototype networks, in Python and as PyTorch Lightning experiments.

    from proto_lightning import PostHocPPN
    ppn = PostHocPPN(model, prototypes_per_class=3).fit(train_loader)

The public names load on first use (PEP 562): the facade imports neither Hydra, W&B nor Lightning.
"""

from __future__ import annotations

from proto_lightning.lazy import lazy_names

__version__ = "0.1.0"

_SOURCES = {
    "PostHocPPN": ".posthoc_ppn",
    "NotFittedError": ".posthoc_ppn",
    "PreprocessingMismatchError": ".posthoc_ppn",
    "Preprocessing": ".models.adapters",
    "NotDecomposableError": ".models.timm_backbones",
    "NMFSettings": ".prototypes.decomposition",
    "RefinementSettings": ".prototypes.decomposition",
    "ProjectionSettings": ".prototypes.projection",
}


__getattr__, __all__ = lazy_names(__name__, _SOURCES)
