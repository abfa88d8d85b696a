"""The Docker files are well-formed and their CUDA pins agree (no Docker engine or download here)."""

import configparser
import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_copies_files_that_exist_and_runs_the_declared_cli():
    instructions = dockerfile()
    copied = [
        source
        for keyword, args in instructions
        if keyword == "COPY"
        for source in args.split()[:-1]
    ]
    assert copied and all((ROOT / source).exists() for source in copied), copied
    # the dependency layer installs against the constraints file it copied
    install = next(a for k, a in instructions if k == "RUN" and " -c " in a)
    constraints = install.split(" -c ", 1)[1].split()[0]
    assert constraints in copied
    # the entry point is the console script setup.cfg declares
    entry = json.loads(next(a for k, a in instructions if k == "ENTRYPOINT"))[0]
    scripts = configparser.ConfigParser()
    scripts.read(ROOT / "setup.cfg")
    declared = scripts["options.entry_points"]["console_scripts"]
    assert entry in {line.split("=")[0].strip() for line in declared.splitlines() if line}


def test_compose_mounts_what_the_image_declares_and_builds_this_dockerfile():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    service = compose["services"]["train"]
    context = (ROOT / "docker" / service["build"]["context"]).resolve()
    assert context == ROOT and (context / service["build"]["dockerfile"]).is_file()
    volumes = json.loads(next(a for k, a in dockerfile() if k == "VOLUME"))
    assert {v.rsplit(":", 1)[1] for v in service["volumes"]} == set(volumes)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {Path(v).name for v in volumes} <= ignored  # mounted data never goes into the image
    assert ".venv" in ignored


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
