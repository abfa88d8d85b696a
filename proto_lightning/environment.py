"""The software and hardware a run was made with, written into its `config.yaml` and `results.md`."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import torch

# distribution names whose version a run records (FAISS: whichever build is installed)
PACKAGES = ("torch", "torchvision", "lightning", "timm", ("faiss-gpu", "faiss-cpu"), "numpy")


def _version(names: str | tuple[str, ...]) -> tuple[str, str]:
    """(the installed distribution's name, its version), or (first name, 'not installed')."""
    for name in (names,) if isinstance(names, str) else names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    first = names if isinstance(names, str) else names[0]
    return first, "not installed"


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what `platform` knows) and the vector
    instructions torch's CPU kernels use on it (their float rounding differs between them)."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text(errors="replace").splitlines()
        name = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), name)
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"


def environment() -> dict[str, str]:
    """Versions of python, torch, torchvision, lightning, timm, FAISS and numpy, the CPU and the
    CUDA devices ('none' without).

    Example:
        >>> env = environment()
        >>> env["python"] == platform.python_version(), "torch" in env
        (True, True)
    """
    out = {"python": platform.python_version()}
    out.update(dict(_version(names) for names in PACKAGES))
    out["cpu"] = cpu_name()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    out["gpu"] = ", ".join(gpus) if gpus else "none"
    return out


def environment_line() -> str:
    """The environment as one line of a results.md note."""
    return "Environment: " + ", ".join(f"{k} {v}" for k, v in environment().items()) + "."
