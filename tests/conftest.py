"""Shared fixtures: toy models with known answers, synthetic slides, and the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CELLVIEW_DATA_DIR") or REPO.parent / "shared" / "data")
SLIDES = DATA / "slides"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test writes results, labels and models to its own folders, never the user's, and sees none of the
    user's models (XDG_DATA_HOME holds cellview.analysis.model_lookup.user_models_dir() and the labels); $CELLVIEW_MODELS_DIR is
    unset."""
    monkeypatch.setenv("CELLVIEW_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("user-data")))
    monkeypatch.delenv("CELLVIEW_MODELS_DIR", raising=False)


@pytest.fixture
def isolated_settings(tmp_path, monkeypatch):
    """The viewer's settings (recent files, last folders) in the test's own file, never the user's."""
    monkeypatch.setenv("CELLVIEW_SETTINGS_FILE", str(tmp_path / "settings.ini"))


@pytest.fixture
def no_bundled_models(monkeypatch):
    """This install without its bundled models (the lookup then has only $CELLVIEW_MODELS_DIR and the user's)."""
    monkeypatch.setattr("cellview.analysis.model_lookup.bundled_models_dir", lambda: None)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} is absent (set CELLVIEW_DATA_DIR to point at shared/data)")
    return DATA


@pytest.fixture(scope="session")
def real_slide(data_dir) -> Path:
    path = data_dir / "slides" / "CMU-1-Small-Region.svs"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    """64-px tiles at 1.0 µm/px; class = dominant colour (red malignant, blue benign, green normal)."""
    from cellview.testing.synthetic import make_toy_model

    return make_toy_model(tmp_path_factory.mktemp("toy64"), patch_px=64, spacing_um=1.0)


@pytest.fixture(scope="session")
def toy_model_224(tmp_path_factory) -> Path:
    """224-px tiles at 0.5 µm/px, the usual histology setting, for the real slides."""
    from cellview.testing.synthetic import make_toy_model

    return make_toy_model(tmp_path_factory.mktemp("toy224"), patch_px=224, spacing_um=0.5)


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory) -> Path:
    """Pyramidal tiled TIFF, 2048 × 1536 at 0.5 µm/px, with three known coloured blocks."""
    from cellview.testing.synthetic import synthetic_slide_rgb, write_pyramid_tiff

    return write_pyramid_tiff(tmp_path_factory.mktemp("synth") / "synthetic.tiff", synthetic_slide_rgb(), 0.5)


@pytest.fixture(scope="session")
def mosaic_slide(tmp_path_factory) -> Path:
    """A mosaic-style pyramid TIFF at 0.5 µm/px with a malignant minority (``testing.synthetic.MOSAIC``): under the
    toy model 15 of 80 tiles malignant in two regions, 8 benign, normal by far the largest share. One slide for the
    call's five places (issue 25): the console, the metadata and cohort.csv (tests/test_call_cli.py), the viewer
    and the kiosk (tests/test_gui_call.py)."""
    from cellview.testing.synthetic import mosaic_rgb, write_pyramid_tiff

    return write_pyramid_tiff(tmp_path_factory.mktemp("mosaic") / "mosaic.tiff", mosaic_rgb(), 0.5)


@pytest.fixture(scope="session")
def fault_dir(tmp_path_factory) -> Path:
    """Marker files that make the cluster's workers die or pause mid-slide (cellview.scale.cohort.FAULT_ENV)."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def dask_cluster(fault_dir, tmp_path_factory):
    """One LocalCluster for the session: 2 worker processes, 1 thread each, slides retried twice.

    The workers get the fault-hook folder, their own result cache and this checkout on their path.
    """
    pytest.importorskip("distributed")
    import dask
    from distributed import LocalCluster

    from cellview.scale.cohort import FAULT_ENV

    env = {FAULT_ENV: str(fault_dir), "CELLVIEW_CACHE_DIR": str(tmp_path_factory.mktemp("worker-cache")),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    with dask.config.set({"distributed.scheduler.allowed-failures": 2,
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=50, env=env)
    yield cluster
    cluster.close()


# Synthetic slides and the toy CAM + domain model of the out-of-domain tests (viewer and GUI).

@pytest.fixture(scope="session")
def cam_domain_model(tmp_path_factory):
    from cellview.testing.synthetic import make_toy_cam_domain_model

    return make_toy_cam_domain_model(tmp_path_factory.mktemp("camdom"))


@pytest.fixture(scope="session")
def square_slide(tmp_path_factory):
    from cellview.testing.synthetic import square_slide_rgb, write_pyramid_tiff

    return write_pyramid_tiff(tmp_path_factory.mktemp("square") / "square.tiff", square_slide_rgb(), 0.5)


@pytest.fixture(scope="session")
def odd_slide(tmp_path_factory):
    from cellview.testing.synthetic import odd_slide_rgb, write_pyramid_tiff

    return write_pyramid_tiff(tmp_path_factory.mktemp("odd") / "odd.tiff", odd_slide_rgb(), 0.5)


# The colour toy model with and without a reference stain, and a heavily stained synthetic H&E slide:
# the stain-normalisation and TTA settings tests (viewer model, GUI and kiosk).
@pytest.fixture(scope="session")
def stain_model(tmp_path_factory) -> Path:
    from cellview.analysis.stain import estimate_reference
    from cellview.testing.synthetic import LAB_A_STAINS, make_toy_model, synthetic_he, synthetic_he_amounts

    ref = estimate_reference([synthetic_he(synthetic_he_amounts(256, 0), LAB_A_STAINS)])
    return make_toy_model(tmp_path_factory.mktemp("stain"), patch_px=64, spacing_um=1.0, name="toy-stain",
                          sidecar_overrides={"stain_reference": ref.to_dict()})


@pytest.fixture(scope="session")
def plain_model(tmp_path_factory) -> Path:
    """The colour toy model as exported before reference stains existed."""
    from cellview.testing.synthetic import make_toy_model

    return make_toy_model(tmp_path_factory.mktemp("plain"), patch_px=64, spacing_um=1.0, name="toy-plain")


@pytest.fixture(scope="session")
def he_slide(tmp_path_factory) -> Path:
    """Synthetic H&E (512 × 256 at 1 µm/px) stained more heavily than the reference: normalisation changes it."""
    import numpy as np

    from cellview.testing.synthetic import LAB_A_STAINS, synthetic_he, synthetic_he_amounts, write_pyramid_tiff

    amounts = np.concatenate([synthetic_he_amounts(256, k) for k in range(2)], axis=1)
    rgb = synthetic_he(amounts * np.array([1.5, 0.6]), LAB_A_STAINS)
    return write_pyramid_tiff(tmp_path_factory.mktemp("he") / "he.tiff", rgb, 1.0, levels=1)
