"""The model card's slide-call section (what the first line says), written from the report ``bench/slide_call.py``
keeps in protocol.json (``slide_call``), and kept across ``cellview export``: the thresholds were chosen on the
recipe's out-of-source tiles, so a re-export of the same training keeps them, its sidecar ``call`` and the section,
instead of falling back to unvalidated defaults."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cellview.base.files import atomic_write_text

CV_GROUPS = {"lung-he": "near-duplicate groups on LC25000 lung images",
             "blood-all": "runs of file numbers (near-duplicate groups for the healthy-blood fields) on the ALL image "
                          "dataset's smear fields and the healthy-blood fields"}
"""What the CV folds of a one-lab model group by, in the sidecar's words."""
MODEL_NOTES = {
    "blood-all": "**Why single fields only (`--mosaics 0`).** A blood-all image is one microscope field; a mosaic of 12 "
                 "fields from different patients' smears is not a smear. With 4 mosaics per kind and fold among the "
                 "choosing units the choice falls to malignant ≥ 5 % of tiles at confidence ≥ 0.8 and benign ≥ 5 % at "
                 "0.9, and on held-out single fields that costs benign recall (mean over folds: malignant 0.990, "
                 "benign 0.938, benign-vs-malignant balanced accuracy 0.964, against 0.986, 0.968 and 0.977 with the "
                 "shipped thresholds); it would find a malignant minority among 12 fields more often (0.95 of such "
                 "mosaics against 0.07 for the vote). A smear image larger than a field (a stated pixel size, many "
                 "fields) with few blasts is therefore the case the shipped thresholds were not chosen for.",
}
"""A model's own paragraph in its card's slide-call section."""
CV_NORMAL = {"lung-he": "normal lung", "blood-all": "smears (its 'normal' fields come from another source)"}


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _th_words(th: dict[str, Any]) -> str:
    def one(d: dict[str, Any]) -> str:
        tests = [f"≥ {d['min_share']:.0%} of tiles" if d["min_share"] is not None else "",
                 f"a region ≥ {d['min_area_mm2']:g} mm²" if d["min_area_mm2"] is not None else ""]
        return f"{' or '.join(x for x in tests if x)} at confidence ≥ {d['min_confidence']:g}"

    return f"malignant {one(th['malignant'])}; benign {one(th['benign'])}"


CARD_START, CARD_END = "<!-- slide-call:start (bench/slide_call.py --write) -->", "<!-- slide-call:end -->"


def card_section(report: dict[str, Any]) -> str:
    """The model card's section on the slide call: what it means, how it was chosen, how often it is wrong."""
    sh = report["shipped"]
    unit = "source" if report["protocol"] == "loso" else "fold"
    how = ("leave-one-source-out: for each held-out source the thresholds were chosen on the other sources' "
           "images and mosaics (their tiles classified by heads that never saw them) and applied to the held-out "
           "one; the shipped thresholds were chosen the same way on every source" if report["protocol"] == "loso"
           else f"grouped 5-fold cross-validation by {CV_GROUPS.get(report['model'], 'the recipe groups')} (no "
           "leave-one-source-out: the figures are for new images of the same lab and are optimistic for another "
           "lab): for each held-out "
           "fold the thresholds were chosen on the other folds' images and mosaics and applied to it; the "
           "shipped thresholds were chosen the same way on every fold")
    rows = []
    parts = ("images", "mosaics") if report["mosaics"] else ("images",)
    for src, v in report["held_out"].items():
        for part in parts:
            for m, name in (("rule", "**slide call**"), ("largest_share", "largest share"), ("vote", "vote")):
                r = v[part][m]
                rows.append(f"| {src} | {part} | {r['images']} | {name} | {_f(r['sensitivity'])} | "
                            f"{_f(r['specificity'])} | {_f(r['normal_called_malignant'])} | "
                            f"{_f(r['balanced_accuracy'])} |")
    normal_tiles = ", ".join(f"{s} {v['images']['normal_tile_malignant_share']:.1%}"
                             for s, v in report["held_out"].items()
                             if v["images"]["normal_tile_malignant_share"] is not None)
    mosaic_rows = [f"| {src} | {kind} | {e['mosaics']} | {e['malignant_tile_share']:.0%} | {e['rule_malignant']:.2f} | "
                   f"{e['largest_share_malignant']:.2f} | {e['vote_malignant']:.2f} |"
                   for src, v in report["held_out"].items() for kind, e in v.get("mosaic_kinds", {}).items()]
    return "\n".join([
        CARD_START,
        "## The slide call (what the first line says)",
        "",
        "CellView's one call for a slide or image (`cellview.analysis.call`; the console's `call:` line, `call` in "
        "the metadata JSON and cohort.csv, the PNG legend, the viewer and the kiosk): the worst finding first. "
        f"**Malignant** when the in-domain tiles called malignant with confidence ≥ "
        f"{sh['malignant']['min_confidence']:g} make ≥ {_share_words(sh['malignant'])} of the tiles"
        + (f" or form a region ≥ {sh['malignant']['min_area_mm2']:g} mm²" if sh['malignant']['min_area_mm2'] else "")
        + ", or malignant is the largest share; else **benign** on "
        f"{_th_words(sh).split('; benign ')[1]} (or the largest share); else **normal**. It makes no call when most "
        "of the tissue is out of domain, when there is no tissue tile, or without a result. The thresholds are in "
        "this model's sidecar (`call`, the same in the INT8 and FP16 copies).",
        "",
        (f"How they were chosen ({report['images']} images, {report['mosaics']} mosaics of 12 real images of one "
         f"{unit}: 1, 2 or 3 malignant, none, or all normal): {how}. " if report["mosaics"] else
         f"How they were chosen ({report['images']} images; no mosaics): "
         f"{how.replace(' and mosaics', '').replace(' images and mosaics', ' images')}. ") + "Screening logic: the malignant thresholds "
        f"maximise {report['miss_weight']:g} × sensitivity + specificity (a missed malignant image costs "
        f"{report['miss_weight']:g} false alarms), then the benign ones the 3-category balanced accuracy. Tile "
        "probabilities at the shipped temperature; no domain score (the shipped statistics saw every "
        f"{unit}). `python bench/slide_call.py --models {report['model']}"
        + ("" if report["mosaics"] else " --mosaics 0") + " --write` reproduces this section.",
        "",
        f"| held-out {unit} | what | n | call | malignant sensitivity | specificity | normal → malignant | "
        "3-category bal. acc. |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *([f"Tiles called malignant on the held-out {unit}'s normal images: {normal_tiles}. Mosaics called malignant, "
           "by kind (slide call / largest share / vote):",
           "",
           f"| held-out {unit} | mosaic | n | malignant tiles | slide call | largest share | vote |",
           "|---|---|---|---|---|---|---|",
           *mosaic_rows,
           ""] if report["mosaics"] else
          [f"Tiles called malignant on the held-out {unit}'s normal images: {normal_tiles}.", ""]),
        plain_words(report),
        "",
        *([MODEL_NOTES[report["model"]], ""] if report["model"] in MODEL_NOTES else []),
        CARD_END,
    ]) + "\n"


def plain_words(report: dict[str, Any]) -> str:
    """How often the call is wrong and what the false alarms cost, in sentences, from the report's figures."""
    unit = "source" if report["protocol"] == "loso" else "fold"
    if not report["mosaics"]:
        mi, vi = report["mean_images_rule"], report["mean_images_vote"]
        return (f"**In plain words** (means over held-out {unit}s): the call finds {mi['sensitivity']:.0%} of the "
                f"malignant images (the vote {vi['sensitivity']:.0%}) and calls {1 - mi['specificity']:.0%} of the "
                f"others malignant (the vote {1 - vi['specificity']:.0%}); every image with a tile gets a call.")
    mi, mm = report["mean_images_rule"], report["mean_mosaics_rule"]
    vi, vm = report["mean_images_vote"], report["mean_mosaics_vote"]
    normal_mosaics = [e["rule_malignant"] for v in report["held_out"].values()
                      for k, e in v.get("mosaic_kinds", {}).items() if k == "all normal"]
    tiles = [v["images"]["normal_tile_malignant_share"] for v in report["held_out"].values()
             if v["images"]["normal_tile_malignant_share"] is not None]
    text = (f"**In plain words** (means over held-out {unit}s): on mosaics with 1–3 malignant images of 12 the call "
            f"is malignant in {mm['sensitivity']:.0%} of them, the vote in {vm['sensitivity']:.0%}; on single images it "
            f"finds {mi['sensitivity']:.0%} of the malignant ones (vote {vi['sensitivity']:.0%}) and calls "
            f"{1 - mi['specificity']:.0%} of the others malignant (vote {1 - vi['specificity']:.0%}). On mosaics of "
            f"normal images only, it says malignant in {min(normal_mosaics):.0%}–{max(normal_mosaics):.0%} of them, "
            f"because the model calls {min(tiles):.0%}–{max(tiles):.0%} of the tiles of a held-out {unit}'s normal "
            "images malignant. ")
    if report["protocol"] == "loso":
        text += ("That is the price of putting sensitivity first: on a new lab's normal colon the model marks about a "
                 "quarter of the tiles malignant, so expect the call to say malignant on most normal slides until "
                 "the model is adapted to the lab with `cellview adapt` (a few labelled slides or images of each "
                 "category; see 'Adapting to a lab's labels': with 5 per category, held-out GlaS normal recall rose "
                 "from 0.41 to 0.81). The call's false alarms after adapting were not measured. The images here are "
                 "at most about 2 mm² (mosaics): the share and area tests were chosen on them, not on whole slides, "
                 "where a small tumour is a small share and scattered false tiles can join into larger regions.")
    else:
        text += (f"These folds share the lab, stain and camera: expect more false alarms on another lab's "
                 f"{CV_NORMAL.get(report['model'], 'normal tissue')}, and adapt the model there with `cellview adapt`.")
    return text


def _share_words(d: dict[str, Any]) -> str:
    return f"{d['min_share']:.0%}" if d["min_share"] is not None else "all"


# ----------------------------------------------------------------------------- kept across cellview export


def previous_call(out_dir: Path) -> dict[str, Any] | None:
    """What an earlier export in ``out_dir`` says about the slide call, read before a new export overwrites it: the
    sidecar's ``call`` thresholds, protocol.json's ``slide_call`` report and whose training they were chosen for."""
    side_path, proto_path = Path(out_dir) / "model.json", Path(out_dir) / "protocol.json"
    try:
        side = json.loads(side_path.read_text(encoding="utf-8")) if side_path.is_file() else {}
        proto = json.loads(proto_path.read_text(encoding="utf-8")) if proto_path.is_file() else {}
    except (OSError, ValueError):
        return None
    if not isinstance(side, dict) or not isinstance(side.get("call"), dict):
        return None
    report = proto.get("slide_call") if isinstance(proto, dict) else None
    return {"name": side.get("name"), "training_data": side.get("training_data"), "call": side["call"],
            "report": report if isinstance(report, dict) else None}


def carry_over(previous: dict[str, Any] | None, side: dict[str, Any]) -> dict[str, Any] | None:
    """Put the earlier export's call thresholds into the new sidecar ``side`` when both describe the same training
    (same model name, same images: the thresholds were chosen on that recipe's out-of-source tiles); return the
    slide-call report for the card and protocol.json. Other training: the thresholds are not carried (the model
    gets the rule's defaults, which say they are not validated) and the console says how to choose new ones."""
    if previous is None:
        return None
    if previous["name"] != side.get("name") or previous["training_data"] != side.get("training_data"):
        print(f"slide-call thresholds not kept: the earlier export's were chosen for {previous['training_data']!r}; "
              f"run `python bench/slide_call.py --models {side.get('name')} --write` to choose this model's",
              file=sys.stderr)
        return None
    side["call"] = previous["call"]
    return previous["report"]


def write_protocol_entry(out_dir: Path, report: dict[str, Any]) -> None:
    """protocol.json keeps the report under ``slide_call`` (the export copies the run's protocol.json over it)."""
    path = Path(out_dir) / "protocol.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data["slide_call"] = report
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def insert_section(card: str, report: dict[str, Any]) -> str:
    """``card`` with its slide-call section written from ``report``: in place of an earlier one, else before
    'Adapting to a lab' / 'What was tried' / 'Model' (the first there is), else at the end."""
    return insert_text(card, card_section(report))


def insert_text(card: str, section: str) -> str:
    """``card`` with the slide-call ``section`` (``card_section`` / ``default_section``) placed as
    ``insert_section`` says."""
    if CARD_START in card and CARD_END in card:
        head, _, rest = card.partition(CARD_START)
        return head + section + "\n" + rest.partition(CARD_END)[2].lstrip("\n")
    anchor = next((a for a in ("## Adapting to a lab", "## What was tried", "## Model") if a in card), None)
    if anchor is None:
        return card.rstrip("\n") + "\n\n" + section
    head, _, tail = card.partition(anchor)
    return head + section + "\n" + anchor + tail


def default_section(model: str) -> str:
    """The slide-call section of a card whose call thresholds were never chosen for it (a new training, or one the
    earlier export's thresholds do not belong to): what the call means, and that how often it is wrong is unknown."""
    from cellview.analysis.callrule import DEFAULT_THRESHOLDS as t

    return "\n".join([
        CARD_START,
        "## The slide call (what the first line says)",
        "",
        "CellView's one call for a slide or image (`cellview.analysis.call`; the console's `call:` line, `call` in "
        "the metadata JSON and cohort.csv, the PNG legend, the viewer and the kiosk): the worst finding first. "
        f"**Malignant** when the in-domain tiles called malignant make {t.describe('malignant')}, or malignant is "
        f"the largest share; else **benign** on {t.describe('benign')} (or the largest share); else **normal**. It "
        "makes no call when most of the tissue is out of domain, when there is no tissue tile, or without a result.",
        "",
        "**These are CellView's default thresholds, not chosen or validated for this model**: how often its call is "
        "wrong has not been measured, and every call says so (\"default thresholds, not validated for this model\"). "
        f"`python bench/slide_call.py --models {model} --write` chooses them by leave-one-source-out (or grouped "
        "CV) on the recipe's data and writes this section with the figures.",
        "",
        CARD_END,
    ]) + "\n"
