"""Results cached by slide fingerprint + model sha256 + analysis parameters.

Reopening an analysed slide is instant; a corrupt or unreadable entry is discarded and the
analysis recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from cellview import __version__
from cellview.analysis.results import AnalysisParams, AnalysisResult, ModelInfo, TileNuclei
from cellview.analysis.tiling import TILING_RULE, TileGrid
from cellview.analysis.tissue import TissueMask
from cellview.base.files import atomic_write_bytes
from cellview.slides.slide import Mpp, SkippedLevel, SlideInfo

log = logging.getLogger(__name__)

_FORMAT = 2  # 2: tiles inside the slide (tiling.TILING_RULE), skipped pyramid levels recorded
_GRID_ARRAYS = ("grid_col", "grid_row", "l0_x", "l0_y", "tissue_fraction")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CELLVIEW_CACHE_DIR") or platformdirs.user_cache_dir("cellview")) / "results"


def cache_key(fingerprint: str, model_sha256: str, params: AnalysisParams, mpp: Mpp | None,
              precision: str = "fp32") -> str:
    """``model_sha256`` is the file that runs (an INT8 / FP16 copy has its own); its ``precision`` is in the key
    too, except FP32's (so keys from before the copies existed stay valid)."""
    payload = {
        "format": _FORMAT,
        "slide": fingerprint,
        "model": model_sha256,
        "params": params.cache_dict(),
        "mpp": [mpp.x_um, mpp.y_um] if mpp else None,
        "tiling": TILING_RULE,
    }
    if precision != "fp32":
        payload["precision"] = precision
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]


def slide_info_to_dict(info: SlideInfo) -> dict[str, Any]:
    return asdict(info)


def slide_info_from_dict(data: dict[str, Any]) -> SlideInfo:
    mpp = Mpp(**data["mpp"]) if data.get("mpp") else None
    return SlideInfo(
        path=data["path"], name=data["name"], vendor=data["vendor"], fingerprint=data["fingerprint"],
        level_dimensions=tuple(tuple(d) for d in data["level_dimensions"]),  # type: ignore[misc]
        level_downsamples=tuple(data["level_downsamples"]), mpp=mpp,
        skipped_levels=tuple(SkippedLevel(**s) for s in data.get("skipped_levels", ())),
    )


def result_to_bytes(result: AnalysisResult) -> bytes:
    grid = result.grid
    scalars = {f.name: getattr(grid, f.name) for f in fields(grid) if f.name not in _GRID_ARRAYS}
    meta = {
        "format": _FORMAT,
        "cellview": __version__,
        "slide": slide_info_to_dict(result.slide),
        "model": asdict(result.model),
        "params": result.params.to_dict(),
        "grid": scalars,
        "provider": result.provider,
        "status": result.status,
        "tile_errors": {str(k): v for k, v in result.tile_errors.items()},
        "timings": result.timings,
        "created_unix": result.created_unix,
        "tissue": None if result.tissue is None else {
            "downsample": result.tissue.downsample, "threshold": result.tissue.threshold,
            "method": result.tissue.method,
        },
        "nuclei": None if result.nuclei is None else {
            "area_unit": result.nuclei.area_unit, "fields": list(TileNuclei.FIELDS),
        },
        "stain": result.stain,
        "reading": result.reading,
    }
    arrays = {f"grid_{k}": getattr(grid, k) for k in _GRID_ARRAYS}
    arrays["probs"] = result.probs
    arrays["state"] = result.state
    if result.tissue is not None:
        arrays["tissue_mask"] = np.packbits(result.tissue.mask, axis=None)
        arrays["tissue_shape"] = np.array(result.tissue.mask.shape)
    if result.nuclei is not None:
        arrays["nuclei"] = result.nuclei.values
    if result.domain_score is not None:
        arrays["domain_score"] = result.domain_score
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def result_from_bytes(data: bytes) -> AnalysisResult:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        if meta.get("format") != _FORMAT:
            raise ValueError("cache format changed")
        grid = TileGrid(**meta["grid"], **{k: z[f"grid_{k}"] for k in _GRID_ARRAYS})
        tissue = None
        if meta["tissue"] is not None:
            shape = tuple(int(v) for v in z["tissue_shape"])
            mask = np.unpackbits(z["tissue_mask"], count=shape[0] * shape[1]).reshape(shape).astype(bool)
            tissue = TissueMask(mask=mask, **meta["tissue"])
        probs, state = z["probs"], z["state"]
        nuclei = None
        if meta.get("nuclei"):
            if list(meta["nuclei"]["fields"]) != list(TileNuclei.FIELDS):
                raise ValueError("nuclei fields changed")
            nuclei = TileNuclei(values=z["nuclei"], area_unit=meta["nuclei"]["area_unit"])
            if nuclei.values.shape != (grid.n_tiles, len(TileNuclei.FIELDS)):
                raise ValueError("nuclei array does not match the grid")
        domain_score = z["domain_score"] if "domain_score" in z.files else None
        if domain_score is not None and domain_score.shape != (grid.n_tiles,):
            raise ValueError("domain scores do not match the grid")
    if probs.shape != (grid.n_tiles, len(meta["model"]["class_names"])) or state.shape != (grid.n_tiles,):
        raise ValueError("array shapes do not match the grid")
    return AnalysisResult(
        slide=slide_info_from_dict(meta["slide"]), model=ModelInfo.from_dict(meta["model"]),
        params=AnalysisParams.from_dict(meta["params"]), grid=grid, probs=probs, state=state,
        provider=meta["provider"], status=meta["status"], tissue=tissue,
        tile_errors={int(k): v for k, v in meta["tile_errors"].items()}, timings=meta["timings"],
        created_unix=meta["created_unix"], nuclei=nuclei, domain_score=domain_score, stain=meta.get("stain") or {},
        reading=meta.get("reading") or {},
    )


class ResultCache:
    """A folder of ``<key>.npz`` files."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def load(self, key: str) -> AnalysisResult | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return result_from_bytes(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("Discarding unreadable cache entry %s (%s); recomputing.", path.name, exc)
            path.unlink(missing_ok=True)
            return None

    def store(self, key: str, result: AnalysisResult) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path(key), result_to_bytes(result))
        except OSError as exc:  # a full or read-only cache must not fail the analysis
            log.warning("Could not write the result cache (%s).", exc)
