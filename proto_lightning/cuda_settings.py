"""Speed settings of the feature passes on CUDA (`cuda.tf32`, `cuda.channels_last`); no-ops elsewhere.

TF32 rounds a float32 matmul's or convolution's inputs to 10 mantissa bits (NVIDIA Ampere and later),
about 2-8x the throughput, ~1e-3 relative error in a feature value. It is switched on only around the
passes that read features for the decomposition: the exactness test and every evaluation run in full
float32, and the head's reconstruction is exact whatever the features (sum_i p~_i = v_c by
construction). `channels_last` stores a convolutional backbone's weights NHWC, which cuDNN's tensor-core
kernels prefer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CudaSettings:
    """`cuda` config group: TF32 in the feature passes, channels-last convolution weights."""

    tf32: bool = True
    channels_last: bool = True


def on_cuda(device: torch.device | str) -> bool:
    """Whether `device` is a CUDA device."""
    return torch.device(device).type == "cuda"


@contextmanager
def feature_math(settings: CudaSettings, device: torch.device | str) -> Iterator[None]:
    """TF32 matmuls and cuDNN convolutions inside the block when `settings.tf32` and on CUDA; the
    previous settings are restored on exit."""
    if not (settings.tf32 and on_cuda(device)):
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def prepare_model(
    model: nn.Module, settings: CudaSettings, device: torch.device | str
) -> nn.Module:
    """`model` on `device`, its 4-d weights channels-last when `settings.channels_last` and on CUDA
    (for a model this package owns: a user's own model is never converted)."""
    model = model.to(device)
    if settings.channels_last and on_cuda(device):
        model = model.to(memory_format=torch.channels_last)
    return model
