"""Before any tile is read: what the labels are for this model, and the warnings to give before the run.

``plan_labels`` maps QuPath classes the model does not know (``classmap``: remembered or given; pending
ones are passed over with a note, never an error), checks that every whole-image label is one the
model knows (an unknown one is an error naming the file), counts the labelled images and regions per
category, and says in advance what will weaken the result: fewer than ``RECOMMENDED_PER_CATEGORY`` per
category ("label N more"), and a category with a single image or region ("the check cannot hold one
out"). The CLI prints the plan before its progress bar; the viewer can show it before it starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cellview.analysis.model_spec import CATEGORIES
from cellview.lab.classmap import apply_mapping, remembered_mapping, valid_labels
from cellview.lab.head import label_targets, source_labels
from cellview.lab.labels import LabelError, LabelSource

RECOMMENDED_PER_CATEGORY = 5
"""Labelled images or regions per category below which ``adapt`` warns (where the evaluation's gain levels off)."""


@dataclass(frozen=True)
class AdaptPlan:
    """The labels as the model reads them, before the run."""

    counts: dict[str, int]  # labelled images / regions per category (regions as drawn)
    files: int
    warnings: tuple[str, ...]
    notes: tuple[str, ...]  # QuPath classes mapped, left out or pending

    @property
    def single(self) -> tuple[str, ...]:
        """Categories with one labelled image or region: the check cannot hold it out."""
        return tuple(c for c, n in self.counts.items() if n == 1)


def too_few(counts: Mapping[str, int], present: Sequence[str], what: str = "image or region") -> list[str]:
    """'benign: only 2 labelled images or regions; label 3 more …' for each category under the recommendation."""
    out = []
    whats = what.replace("image or region", "images or regions")
    for c in present:
        n = counts.get(c, 0)
        if n < RECOMMENDED_PER_CATEGORY:
            more = RECOMMENDED_PER_CATEGORY - n
            have = "none labelled" if n == 0 else f"only {n} labelled {what if n == 1 else whats}"
            out.append(f"{c}: {have}; label {more} more, from other slides or images — about "
                       f"{RECOMMENDED_PER_CATEGORY} per category is where the gain levels off in leave-one-source-out"
                       + (f"; without any, the model keeps its own {c} calls" if n == 0 else ""))
    return out


def single_warning(single: Sequence[str], labelled: Sequence[str]) -> str | None:
    """The check cannot hold out a category's only image or region: say so, and what it does instead."""
    if not single:
        return None
    which = ("each category has only one labelled region or image" if len(single) == len(labelled)
             else f"{', '.join(single)} {'has' if len(single) == 1 else 'have'} only one labelled region or image")
    return (f"{which}: the check cannot hold one out, so it holds out spatial blocks of that region instead. Tiles next "
            "to each other look alike, so that check is optimistic: it can say 'worse' or 'not distinguishable', never "
            "'better'. Label a second region of each category, on another slide if you can.")


def plan_labels(sources: Sequence[LabelSource], spec: Any,
                mapping: Mapping[str, str] | None = None) -> tuple[list[LabelSource], AdaptPlan]:
    """The sources with QuPath classes mapped (pending ones dropped), and the plan (module docstring).

    ``spec``: the model (``class_names``, ``class_categories``, ``name``); ``mapping``: QuPath class →
    label (default: the one remembered). Raises LabelError for a whole-image label the model does not know.
    """
    mapping = remembered_mapping() if mapping is None else mapping
    valid = valid_labels(spec.class_names, spec.class_categories)
    out: list[LabelSource] = []
    notes: list[str] = []
    for source in sources:
        if source.label is None and source.regions:
            got = apply_mapping(source.regions, valid, mapping)
            notes += got.notes(source.origin or source.name)
            if not any(not r.is_ignore for r in got.regions):
                notes.append(f"{source.origin or source.name}: no region is a label of {spec.name}; passed over")
                continue
            source = replace(source, regions=got.regions)
        try:
            label_targets(source_labels(source), spec)
        except LabelError as exc:
            raise LabelError(f"{exc.message} It is in {source.origin or source.name}.") from None
        out.append(source)
    targets = label_targets([lab for s in out for lab in source_labels(s)], spec) if out else {}
    counts: dict[str, int] = {}
    for s in out:
        for lab in source_labels(s):
            cat = targets[lab].category
            counts[cat] = counts.get(cat, 0) + 1
    present = [c for c in CATEGORIES if c in spec.class_categories]
    labelled = [c for c in present if counts.get(c)]
    warnings = too_few(counts, present) if out else []
    single = single_warning([c for c in labelled if counts[c] == 1], labelled)
    if single:
        warnings.append(single)
    return out, AdaptPlan({c: counts.get(c, 0) for c in present}, len(out), tuple(warnings), tuple(notes))
