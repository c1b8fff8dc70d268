"""Writing the adapted model folder: the base ONNX with the new head (``onnx_graph.replace_linear_head``:
features, feature maps and activation maps unchanged), its FP16 copy when the base has one, a sidecar
with provenance, the out-of-domain statistics with the lab's tissue added (``domain.with_lab``), an
``adaptation.json`` report and a generated model card (``write_adapted``).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cellview import __version__
from cellview.analysis.model_spec import CATEGORIES, ModelSpec, sha256_file, sidecar_for
from cellview.analysis.results import AnalysisParams
from cellview.base.files import atomic_write_bytes, atomic_write_text
from cellview.lab.check import AdaptReport
from cellview.lab.head import AdaptSettings
from cellview.lab.labtiles import AdaptError, LabTiles

ADAPTATION_FILE = "adaptation.json"


def check_out_dir(out_dir: Path, base: ModelSpec) -> None:
    """Never write over the base model, nor over a folder that holds another, non-adapted model."""
    if out_dir.resolve() == base.onnx_path.parent.resolve():
        raise AdaptError(f"{out_dir} is the base model's own folder; its files are never modified. Choose another "
                         "--out.")
    sidecar = out_dir / "model.json"
    if sidecar.exists():
        try:
            adapted = "adaptation" in json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            adapted = False
        if not adapted:
            raise AdaptError(f"{out_dir} already holds a model that was not made by cellview adapt; choose an empty "
                             "or new --out folder.")


def write_adapted(out_dir: Path, base: ModelSpec, lab: LabTiles, weight: np.ndarray, bias: np.ndarray,
                  report: AdaptReport, params: AnalysisParams, settings: AdaptSettings, name: str | None,
                  command: str) -> tuple[Path, dict[str, Any]]:
    """The model folder: ONNX (+ FP16) with the new head, sidecars, domain statistics, report and card.

    Built beside ``out_dir`` and moved into place once whole, so a crash leaves either the previous
    folder or the new one, never a model without its statistics. The domain file and its sidecar
    entries are written as ``cellview domain fit`` writes them (``train.domain.write_domain``).
    """
    import shutil

    import onnx

    from cellview.analysis.domain import with_lab
    from cellview.analysis.domain_store import write_domain
    from cellview.analysis.onnx_graph import replace_linear_head

    today = _dt.date.today().isoformat()
    name = name or f"{base.name}-adapted"
    stage = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        onnx_path = stage / "model.onnx"
        atomic_write_bytes(onnx_path, replace_linear_head(onnx.load(str(base.onnx_path)), weight,
                                                          bias).SerializeToString())
        side = json.loads(base.sidecar_path.read_text(encoding="utf-8"))
        side.pop("domain", None)
        if isinstance(side.get("call"), dict):
            side["call"] = base_call(side["call"], base)
        provenance = _provenance(base, lab, report, params, settings, today, command)
        side.update({
            "name": name,
            "version": f"{base.version}+lab.{today}" if base.version else f"lab.{today}",
            "description": f"{base.description or base.name}; head adapted to a lab's labels ({today})"
                           + (f"; {mark}" if (mark := adaptation_mark({"adaptation": provenance})) else ""),
            "onnx_sha256": sha256_file(onnx_path),
            "training_data": f"{base.training_data} + a lab's {len(lab.files)} labelled images / slides "
                             f"({len(lab.features)} tiles); see MODEL_CARD.md",
            "metrics": {"adaptation": provenance["cross_validation"],
                        "base_model": {k: v for k, v in base.metrics.items() if k in ("loso", "cv", "image_rule")}},
            "adaptation": provenance,
        })
        atomic_write_text(stage / "model.json", json.dumps(side, indent=2) + "\n")
        fp16 = base.onnx_path.with_name("model.fp16.onnx")
        if fp16.exists() and sidecar_for(fp16).exists():
            path16 = stage / "model.fp16.onnx"
            atomic_write_bytes(path16, replace_linear_head(onnx.load(str(fp16)), weight, bias).SerializeToString())
            side16 = {**side, "name": f"{name}-fp16", "onnx_sha256": sha256_file(path16), "precision": "fp16"}
            atomic_write_text(sidecar_for(path16), json.dumps(side16, indent=2) + "\n")
        if base.domain is not None:
            stats = with_lab(base.domain, lab.features, [str(v) for v in lab.label], lab.file,
                             info={"date": today, "base_domain_sha256": base.domain_sha256})
            phrase = f"{base.domain.training_data} and this lab's labelled tissue"
            write_domain(onnx_path, replace(stats, info={**stats.info, "training_data": phrase}))
            side = json.loads((stage / "model.json").read_text(encoding="utf-8"))
        atomic_write_text(stage / ADAPTATION_FILE, json.dumps(_report_json(report, lab, base), indent=2) + "\n")
        atomic_write_text(stage / "MODEL_CARD.md", model_card(side, report, base))
        ModelSpec.load(onnx_path)  # what we write must validate
        old = out_dir.parent / f".{out_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            out_dir.rename(old)
        stage.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir / "model.onnx", side


def _provenance(base: ModelSpec, lab: LabTiles, report: AdaptReport, params: AnalysisParams,
                settings: AdaptSettings, today: str, command: str) -> dict[str, Any]:
    """The sidecar's ``adaptation`` entry: where the model came from, on what labels, measured how."""
    tiles_per_file = np.bincount(lab.file, minlength=len(lab.files))
    return {
        "date": today,
        "base": {"name": base.name, "version": base.version, "onnx_sha256": base.onnx_sha256,
                 "domain_sha256": base.domain_sha256 or None, "path": str(base.onnx_path)},
        "shipped_base": _shipped_entry(base),
        "decision": report.decision.as_dict() if report.decision is not None else None,
        "written_because": report.written_because or "better",
        "not_better": report.decision is not None and not report.decision.better,
        "label_counts": _label_counts(lab),
        "files": [{"path": f, "items": sum(it.file == i for it in lab.items), "tiles": int(tiles_per_file[i])}
                  for i, f in enumerate(lab.files)],
        "unreadable": [{"path": f, "reason": why} for f, why in lab.unreadable],
        "tiles": int(len(lab.features)),
        "analysis": {"mpp_um": params.mpp_um, "tissue_threshold": params.tissue_threshold,
                     "tissue_method": params.tissue.method, "stain_normalize": params.stain_normalize},
        "method": {"head": "linear softmax regression on the base model's pooled features, L2 pull towards the "
                           "base head; labels weighted per category, then per image or region",
                   **{k: getattr(settings, k) for k in ("l2_to_base", "iterations", "learning_rate", "seed")}},
        "cross_validation": {"how": report.cv_how, "folds": report.cv_folds, "rule": "confidence-weighted vote of "
                             "the tiles' categories per image or region", "before": report.before.as_dict(),
                             "after": report.after.as_dict(), "improved": report.improved,
                             "decision": report.decision.as_dict() if report.decision is not None else None},
        "warnings": list(report.warnings),
        "cellview": __version__,
        "command": command,
    }


def base_call(call: dict[str, Any], base: ModelSpec) -> dict[str, Any]:
    """The base's slide-call thresholds as the adapted model's, saying so: they were chosen (validated by
    leave-one-source-out, say) for the base model's head and were not re-validated on the lab's labels, so the
    copy must not claim that validation for the new head. The base's own record moves under ``validation``."""
    out = dict(call)
    was = str(call.get("chosen_by") or "").strip()
    out["chosen_by"] = (f"the base model's thresholds ({base.name} {base.version}".strip() + "), kept as they were: "
                        "not re-validated for the adapted head on the lab's labels"
                        + (f" (for the base: {was})" if was else ""))
    out["validation"] = {"of_base_model": call.get("validation") or {}, "re_validated": False}
    return out


def adaptation_mark(sidecar: dict[str, Any]) -> str:
    """What the model list shows beside an adapted model that was not shown better than its base ('' otherwise):
    read from the sidecar's ``adaptation`` entry (``cellview models``; the viewer's model list)."""
    prov = sidecar.get("adaptation") if isinstance(sidecar, dict) else None
    if not isinstance(prov, dict) or not prov.get("not_better"):
        return ""
    decision = prov.get("decision") or {}
    phrase = decision.get("phrase", "")
    how = {"chosen": "chosen by the person", "forced": "written with --force / Write it anyway"}.get(
        str(prov.get("written_because")), "written anyway")
    return f"NOT shown better than its base on the lab's labels ({phrase}; {how})" if phrase else (
        f"NOT shown better than its base on the lab's labels ({how})")


def _shipped_entry(base: ModelSpec) -> dict[str, Any]:
    """The model at the root of the adaptation chain (the base itself when it was not adapted)."""
    prov = base.raw.get("adaptation") if isinstance(base.raw.get("adaptation"), dict) else None
    if prov is None:
        return {"name": base.name, "version": base.version, "onnx_sha256": base.onnx_sha256,
                "path": str(base.onnx_path)}
    root = prov.get("shipped_base") or prov.get("base") or {}
    return {k: root.get(k) for k in ("name", "version", "onnx_sha256", "path")}


def shipped_base(spec: ModelSpec) -> Path | None:
    """The not-adapted model an adapted one was built from (following adapted-from-adapted), when it is still
    where it was and unchanged; None for a model that was not adapted, or whose base is gone or changed."""
    prov = spec.raw.get("adaptation") if isinstance(spec.raw.get("adaptation"), dict) else None
    if prov is None:
        return None
    root = prov.get("shipped_base") or prov.get("base") or {}
    path = Path(str(root.get("path") or ""))
    if not path.is_file() or sha256_file(path) != root.get("onnx_sha256"):
        return None
    return path


def describe_base(spec: ModelSpec) -> str:
    """Which base an adaptation builds on, in words ('colon-he 2.0.0', or '… itself adapted from …')."""
    prov = spec.raw.get("adaptation") if isinstance(spec.raw.get("adaptation"), dict) else None
    own = f"{spec.name} {spec.version}".strip()
    if prov is None:
        return own
    root = prov.get("shipped_base") or prov.get("base") or {}
    return (f"{own}, itself adapted from {root.get('name', '?')} {root.get('version', '')}".strip()
            + f" on {prov.get('date', '?')} (the new labels are fitted on top of its head)")


def _label_counts(lab: LabTiles) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    tiles_per_item = np.bincount(lab.item, minlength=len(lab.items))
    for i, it in enumerate(lab.items):
        entry = out.setdefault(it.label, {"items": 0, "tiles": 0, "files": 0})
        entry["items"] += 1
        entry["tiles"] += int(tiles_per_item[i])
    for label, entry in out.items():
        entry["files"] = len({it.file for it in lab.items if it.label == label})
    return out


def _report_json(report: AdaptReport, lab: LabTiles, base: ModelSpec) -> dict[str, Any]:
    """Per labelled image or region: its file, label, tiles and the call before and after (out of fold)."""
    return {
        "summary": report.summary(),
        "cross_validation": {"how": report.cv_how, "folds": report.cv_folds, "before": report.before.as_dict(),
                             "after": report.after.as_dict(), "improved": report.improved,
                             "decision": report.decision.as_dict() if report.decision is not None else None},
        "written_because": report.written_because,
        "items": [{"file": lab.files[it.file], "label": it.label, "category": it.category, "tiles": it.n_tiles}
                  for it in lab.items],
        "warnings": list(report.warnings),
        "unreadable": [{"path": f, "reason": why} for f, why in lab.unreadable],
        "notes": list(lab.notes),
        "seconds": round(report.seconds, 1),
        "base_model": base.name,
    }


def _pct(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.2f}"


def model_card(side: dict[str, Any], report: AdaptReport, base: ModelSpec) -> str:
    """The adapted model's card: before vs after on the lab's own labels first, then what it is and is not."""
    b, a = report.before, report.after
    prov = side["adaptation"]
    rows = [("Labelled images / regions (vote of their tiles)", b.items_balanced_accuracy, a.items_balanced_accuracy,
             b.items_recall, a.items_recall),
            ("Their tiles, one by one", b.tiles_balanced_accuracy, a.tiles_balanced_accuracy, b.tiles_recall,
             a.tiles_recall)]
    table = ["| on your labels, cross-validated | balanced accuracy before → after | recall malignant | recall benign "
             "| recall normal |", "|---|---|---|---|---|"]
    for title, vb, va, rb, ra in rows:
        table.append(f"| {title} | **{_pct(vb)} → {_pct(va)}** | " + " | ".join(
            f"{_pct(rb[c])} → {_pct(ra[c])}" for c in CATEGORIES) + " |")
    counts = "; ".join(f"{label}: {c['items']} images / regions in {c['files']} files, {c['tiles']} tiles"
                       for label, c in prov["label_counts"].items())
    loso = base.metrics.get("loso", {})
    base_line = ""
    if loso:
        base_line = ("The base model's own figures (leave-one-source-out, category balanced accuracy): "
                     + ", ".join(f"{k} {v['category_balanced_accuracy']:.2f}" for k, v in loso.items()
                                 if isinstance(v, dict) and "category_balanced_accuracy" in v and k != "all") + ".")
    d = report.decision
    because = {"chosen": "written because the person chose it when the labels could not tell",
               "forced": "written only because it was forced (--force, or Write it anyway)"}
    verdict = ("better than the base model" if report.improved else
               f"**not better** than the base model ({because.get(report.written_because, because['forced'])})")
    if d is not None:
        verdict += (f": **{d.phrase()}** in {d.measure_text_short()}, {round(d.interval * 100)} % bootstrap "
                    f"interval over the {d.units} labelled images / regions" + (f" ({d.note})" if d.note else ""))
    parts = [
        f"# {side['name']} — {base.name} {base.version} adapted to a lab's labels".replace("  ", " "),
        "",
        "**Not for clinical use.** Research model; it has not been validated for diagnosis.",
        "",
        "## Before vs after, on this lab's own labels",
        "",
        f"On the labels it was adapted on, scored **out of fold** ({report.cv_how}): each image or slide was "
        "called by a head fitted without it, so no tile was scored by a head that saw it. The adapted model is "
        f"{verdict}.",
        "",
        *table,
        "",
        "Rows are true categories' recall; balanced accuracy is their mean over the labelled categories. "
        "Images and regions are called by the confidence-weighted vote of their tiles' categories.",
        "",
        "### What these numbers mean, and what they do not",
        "- They say how well each model reproduces *these* labels on images or slides of this lab it did not "
        "see. They are not a validation on new patients of another lab, nor a clinical accuracy.",
        f"- They rest on {len(report.lab.items)} labelled images or regions: one call more or less moves the "
        "balanced accuracy by a lot. More labels, from more slides, give firmer figures and a better head.",
        "- Tissue nobody labelled keeps the base model's behaviour only approximately: the head is pulled towards "
        "the base head, not frozen. Check a few slides of each kind before relying on it.",
        "",
        "## Labels",
        f"- {counts}.",
        f"- {len(report.lab.files)} images / slides, {len(report.lab.features)} tiles; listed with their counts in "
        "`model.json` (`adaptation.files`) and per image / region with both calls in `adaptation.json`.",
        *[f"- Could not be used: {Path(f).name}: {why}" for f, why in report.lab.unreadable],
        *[f"- Note: {n}" for n in report.lab.notes],
        *[f"- **Warning**: {w}" for w in report.warnings],
        "",
        "## What changed",
        f"- Base model: {base.name} {base.version} (`{base.onnx_path.name}` sha256 `{base.onnx_sha256[:16]}…`); its "
        "files were not modified.",
        "- Only the linear head (and the activation maps' copy of it) was refitted, on the base model's pooled "
        "features of the labelled tiles: weighted softmax regression with an L2 pull towards the base head "
        f"(λ = {prov['method']['l2_to_base']}, {prov['method']['iterations']} full-batch Adam steps). The network "
        "before the features is byte-identical, so `features`, `feature_map` and `cam` are the base model's.",
        f"- Tiles were cut as `cellview analyze` cuts them at {base.spacing_um_px} µm/px"
        + (f" from slides read at {prov['analysis']['mpp_um']} µm/px" if prov["analysis"]["mpp_um"] else "")
        + f", stain normalisation {prov['analysis']['stain_normalize']}"
        + (" — analyse with the same `--stain-normalize` option" if prov["analysis"]["stain_normalize"] != "none"
           else "") + ".",
        "- Out of domain: the base statistics plus the lab's labelled tissue (one mean per label, calibrated on the "
        "lab's tiles scored out of file), so tissue like the lab's scores in domain; glass, blur and ink checks "
        "are unchanged." if base.domain is not None else "- The base model has no domain statistics; neither has this one.",
        f"- Temperature {base.temperature:.3f} and classes are the base model's.",
        "- No INT8 copy: an INT8 copy must be validated against its own FP32 model before it is used, so "
        "`--precision auto` runs these FP32 weights on a CPU"
        + (" (the FP16 copy, with the same new head, on a GPU)." if base.onnx_path.with_name("model.fp16.onnx").exists() else "."),
        "",
        "## Limits",
        "- Made from one lab's labels: it fits that lab's staining and scanner; on other labs' slides it may be "
        "worse than the base model.",
        "- The labels are the ground truth here; errors in them are learnt.",
        f"- {base_line}" if base_line else "- The base model's card gives its own figures.",
        "- Not for clinical use.",
        "",
        "## Reproduce",
        "```",
        prov.get("command") or "(command not recorded)",
        "```",
        "",
    ]
    return "\n".join(parts)

