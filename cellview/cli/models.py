"""`cellview models`: where models are looked up on this machine, and the models found there."""

from __future__ import annotations

import argparse
from pathlib import Path

from cellview.base.errors import CellviewError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="where models are looked up, and the models found there")
    p.set_defaults(func=cmd_models)


def model_lookup_lines() -> list[str]:
    """The model lookup order with this machine's folders (model.model_roots documents the rule)."""
    from cellview.analysis.model_lookup import ORIGINS, model_roots

    roots = {r.origin: r.path for r in model_roots(keep_duplicates=True)}
    rows = [("--model PATH", "a model file or folder named on the command line")]
    seen: set[Path] = set()
    for origin, label in ORIGINS.items():
        path = roots.get(origin)
        if path is None:
            note = "not set" if origin == "env" else "none in this install"
        else:
            note = str(path) + ("" if path.is_dir() else " (absent)")
            note += " (the same folder as above)" if path.resolve() in seen else ""
            note += "  ← cellview export / adapt save here" if origin == "user" else ""
            seen.add(path.resolve())
        rows.append((label, note))
    lines = ["Model lookup (a name is taken from the first place that has it):"]
    lines += [f"  {i}. {label:<23} {note}" for i, (label, note) in enumerate(rows, start=1)]
    return lines


def cmd_models(args: argparse.Namespace) -> int:
    from cellview.analysis.model_lookup import DEFAULT_MODEL, ORIGINS, model_entries
    from cellview.analysis.model_spec import ModelSpec
    from cellview.lab.modelfolder import adaptation_mark

    print("\n".join(model_lookup_lines()))
    entries = model_entries(include_hidden=True)
    print()
    if not entries:
        print("No models found in these folders.")
        return 1
    for e in entries:
        marks = [ORIGINS[e.origin]] + (["default"] if e.name == DEFAULT_MODEL and not e.hidden_by else [])
        head = f"{e.name} ({', '.join(marks)})"
        if e.hidden_by:
            print(f"{head}: hidden by the {e.name} in {ORIGINS[e.hidden_by]}; {e.path.parent}")
            continue
        try:
            spec = ModelSpec.load(e.path)
            domain = "domain score" if spec.domain is not None else "no domain score"
            adapted = spec.raw.get("adaptation") if isinstance(spec.raw.get("adaptation"), dict) else None
            origin = (f"; adapted from {adapted['base']['name']} {adapted['base']['version']} on {adapted['date']}"
                      if adapted else "")
            mark = adaptation_mark(spec.raw) if adapted else ""
            origin += f"; {mark}" if mark else ""
            print(f"{head}: {len(spec.class_names)} classes {', '.join(spec.class_names)}; "
                  f"{spec.patch_size_pixels} px at {spec.spacing_um_px} µm/px; {domain}{origin}")
            if not spec.reading.is_default:
                print(f"    reads {spec.reading.foreground.describe()}" + (
                    f"; an image without a pixel size: {_unstated_words(spec)}"
                    if spec.reading.unstated.read != "ask" else ""))
            card = e.path.parent / "MODEL_CARD.md"
            if card.is_file():
                print(f"    card: {card}")
        except CellviewError as exc:
            print(f"{head}: INVALID: {exc.message}")
    return 0


def _unstated_words(spec) -> str:
    """How a model reads an image that states no pixel size, in a few words."""
    u = spec.reading.unstated
    if u.read == "whole-image":
        return f"read whole, resized to {spec.patch_size_pixels} px"
    if u.read == "assume":
        return f"taken as {u.mpp_um:g} µm/px"
    return f"taken as one field {u.field_um:g} µm wide"
