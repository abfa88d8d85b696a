"""Data: dataset indexes, keypoint-aware transforms, the shared datamodules, the part-dataset generator.

The names below are imported on first use (PEP 562), so `proto_lightning.data.generate`, which needs
only numpy and PIL, starts without torch and Lightning (`make-dataset` in 7 s instead of 18 s).
"""

from __future__ import annotations

from proto_lightning.lazy import lazy_names

_SOURCES = {
    "CUB200DataModule": ".datamodule",
    "ImageFolderDataModule": ".datamodule",
    "PartDataModule": ".datamodule",
    "ImageRecords": ".records",
    "read_cub_layout": ".records",
    "read_image_folders": ".records",
}


__getattr__, __all__ = lazy_names(__name__, _SOURCES)
