"""Lightning callbacks that log what the prototype networks guarantee and show."""

from proto_lightning.callbacks.epoch_timer import EpochTimerCallback
from proto_lightning.callbacks.faithfulness import FaithfulnessCallback
from proto_lightning.callbacks.gallery import PrototypeGalleryCallback
from proto_lightning.callbacks.head_reconstruction import HeadReconstructionCallback

__all__ = [
    "EpochTimerCallback",
    "FaithfulnessCallback",
    "HeadReconstructionCallback",
    "PrototypeGalleryCallback",
]
