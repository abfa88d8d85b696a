"""Data: dataset indexes, keypoint-aware transforms, the shared datamodules, the part-dataset generator."""

from proto_lightning.data.datamodule import CUB200DataModule, ImageFolderDataModule, PartDataModule
from proto_lightning.data.records import ImageRecords, read_cub_layout, read_image_folders

__all__ = [
    "CUB200DataModule",
    "ImageFolderDataModule",
    "ImageRecords",
    "PartDataModule",
    "read_cub_layout",
    "read_image_folders",
]
