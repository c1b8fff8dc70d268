"""Writing a model's out-of-domain statistics: ``domain.npz`` beside the weights, its entry in each sidecar.

Shared by ``cellview domain fit`` (train) and the lab's adaptation (lab), which both produce new
statistics; kept in the engine so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from cellview.analysis.domain import DOMAIN_FILE, DomainStats
from cellview.analysis.model_spec import ModelSpec, sidecar_for
from cellview.base.files import atomic_write_bytes, atomic_write_text


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_domain(onnx_path: Path, stats: DomainStats) -> Path:
    """``domain.npz`` next to the model; its sha256 into this sidecar and any sibling (FP16) sidecar."""
    folder = Path(onnx_path).parent
    path = folder / DOMAIN_FILE
    data = stats.to_bytes()
    atomic_write_bytes(path, data)
    entry = {"file": DOMAIN_FILE, "sha256": hashlib.sha256(data).hexdigest(), "method": stats.info.get("method"),
             "threshold": stats.threshold, "training_data": stats.training_data,
             "feature_output": "features", "components": stats.components}
    for onnx in sorted(folder.glob("*.onnx")):
        side = sidecar_for(onnx)
        if not side.exists():
            continue
        raw = json.loads(side.read_text(encoding="utf-8"))
        names = _onnx_outputs(onnx)
        if "features" not in names:
            _say(f"  {onnx.name} has no features output; its sidecar gets no domain entry")
            continue
        raw["domain"] = entry
        raw["outputs"] = names
        atomic_write_text(side, json.dumps(raw, indent=2) + "\n")
        ModelSpec.load(onnx)  # what we ship must validate
    return path


def _onnx_outputs(onnx_path: Path) -> list[str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    return [o.name for o in sess.get_outputs()]
