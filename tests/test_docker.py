"""The Docker files are well-formed (no Docker engine here to build them)."""

from pathlib import Path

import yaml

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
    assert 'pip install -e ".[dev]"' in text and 'ENTRYPOINT ["proto-lightning"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "runs"} <= set(ignored)
