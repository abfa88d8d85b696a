"""Models: backbone adapters and the black-box classifier."""

from proto_lightning.models.backbones import BACKBONES, FeatureBackbone, build_backbone
from proto_lightning.models.blackbox import BlackBoxClassifier, BlackBoxNet
from proto_lightning.models.protopnet import ProtoPNet, ProtoPNetNet

__all__ = [
    "BACKBONES",
    "BlackBoxClassifier",
    "BlackBoxNet",
    "FeatureBackbone",
    "ProtoPNet",
    "ProtoPNetNet",
    "build_backbone",
]
