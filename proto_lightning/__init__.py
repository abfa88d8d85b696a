"""proto-lightning: post-hoc part-prototype networks as PyTorch Lightning experiments."""

__version__ = "0.1.0"
