"""The Docker files are well-formed and their CUDA pins agree (no Docker engine or download here)."""

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_parses_and_mounts_data_and_runs():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    service = compose["services"]["train"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    targets = {v.rsplit(":", 1)[1] for v in service["volumes"]}
    assert targets == {"/app/data", "/app/runs"}
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_dockerfile_installs_the_package_and_uses_the_cli():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert text.startswith("# CUDA image") and "FROM nvidia/cuda:" in text
    assert '-c docker/constraints-cuda12.txt -e ".[dev]"' in text
    assert 'ENTRYPOINT ["proto-lightning"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "runs"} <= set(ignored)


def pins() -> dict[str, str]:
    lines = (ROOT / "docker" / "constraints-cuda12.txt").read_text().splitlines()
    found = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {r.name: str(next(iter(r.specifier)).version) for r in found}


def test_base_image_torch_and_faiss_share_one_cuda_version():
    """A CUDA 13 torch beside a CUDA 12 FAISS and base image needs a newer driver than many nodes have."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    base = re.search(r"FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-", text).groups()  # ('12', '6')
    index = re.search(r"TORCH_INDEX=\S+/whl/cu(\d+)", text).group(1)  # '126'
    assert index == "".join(base)
    pinned = pins()
    for package in ("torch", "torchvision"):
        assert pinned[package].endswith(f"+cu{index}"), (package, pinned[package])
    runtime = pinned[f"nvidia-cuda-runtime-cu{base[0]}"]  # the runtime FAISS loads: the image's
    assert runtime.split(".")[:2] == list(base)


def test_faiss_pin_needs_the_pinned_cuda_runtime():
    """faiss-gpu's own metadata (the installed copy, when it is the pinned version) asks for the
    CUDA runtime the constraints pin: the pins resolve together without a download."""
    pinned = pins()
    if metadata.version("faiss-gpu") != pinned["faiss-gpu"]:
        pytest.skip(f"installed faiss-gpu {metadata.version('faiss-gpu')} is not the pinned one")
    needs = {
        r.name: r.specifier
        for r in map(Requirement, metadata.requires("faiss-gpu") or [])
        if r.name.startswith("nvidia-cuda-runtime")
    }
    assert set(needs) == {"nvidia-cuda-runtime-cu12"}
    assert pinned["nvidia-cuda-runtime-cu12"] in needs["nvidia-cuda-runtime-cu12"]
