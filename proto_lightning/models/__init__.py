"""Models: backbone adapters and the black-box classifier."""

from proto_lightning.models.backbones import BACKBONES, FeatureBackbone, build_backbone
from proto_lightning.models.blackbox import BlackBoxClassifier, BlackBoxNet

__all__ = ["BACKBONES", "BlackBoxClassifier", "BlackBoxNet", "FeatureBackbone", "build_backbone"]
