"""The wheel's configuration ships every package folder and every file of every model folder.

The real proof is scripts/release_check.py (built, installed and run by .ci/run); these checks are
quick and say which rule of pyproject.toml is wrong.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setuptools_config() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_folder_of_the_package_is_listed(setuptools_config):
    folders = {
        ".".join(p.relative_to(REPO).parts)
        for p in [REPO / "cellview", *(REPO / "cellview").rglob("*")]
        if p.is_dir() and p.name != "__pycache__" and any(f.is_file() for f in p.iterdir())
    }
    assert folders - set(setuptools_config["packages"]) == set()


def test_the_models_package_is_the_repository_models_folder(setuptools_config):
    assert "cellview.models" in setuptools_config["packages"]
    assert setuptools_config["package-dir"]["cellview.models"] == "models"
    assert not (REPO / "cellview" / "models").exists()  # one copy: the wheel's is made at build time


def test_every_model_file_and_future_variants_are_package_data(setuptools_config):
    globs = setuptools_config["package-data"]["cellview.models"]

    def shipped(rel: str) -> bool:
        return any(fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs)

    files = [p.relative_to(REPO / "models").as_posix() for p in (REPO / "models").rglob("*") if p.is_file()]
    model_files = [f for f in files if "/wsinfer/" not in f]
    assert any(f.endswith("/model.onnx") for f in model_files) and any(f.endswith("/domain.npz") for f in model_files)
    assert [f for f in model_files if not shipped(f)] == []
    assert [f for f in files if "/wsinfer/" in f and shipped(f)] == []  # the TorchScript stays out
    for future in ("model.int8.onnx", "model.int8.json", "calibration.json"):
        assert shipped(f"colon-he/{future}")
