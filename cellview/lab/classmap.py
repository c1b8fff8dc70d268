"""QuPath classes the model does not know ("Tumor", "Stroma", "Tumor: Positive"): a mapping, remembered, and until
then not labels.

An annotation's class is a label when it names a category or a class of the model (any case). Any
other class needs a mapping to one of them — or to nothing (leave it out) — chosen once per QuPath
class and remembered in the user's data folder (``class_map.json`` beside the viewer's labels), so the
next import of a QuPath project's export is labelled the same way. Until a class is mapped its regions
are *pending*: kept in the file, drawn as pending by the viewer, never labels — they neither override
the labels drawn before them nor stop ``cellview adapt``.

Qt-free: the viewer's import dialog lists ``pending_classes`` with ``mapping_choices`` and calls
``remember_mapping``; ``apply_mapping`` gives the regions that are labels now.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cellview.analysis.model_spec import CATEGORIES
from cellview.base.files import atomic_write_text
from cellview.lab.labels import IGNORE, LabelRegion, user_labels_dir

LEAVE_OUT = IGNORE
"""A QuPath class mapped to this is left out of the labels (QuPath's own Ignore* class)."""


def class_map_path() -> Path:
    return user_labels_dir() / "class_map.json"


def remembered_mapping() -> dict[str, str]:
    """QuPath class → label (a category, a model's class, or Ignore*) as chosen before."""
    try:
        data = json.loads(class_map_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    got = data.get("classes") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in got.items() if isinstance(v, str)} if isinstance(got, dict) else {}


def remember_mapping(qupath_class: str, label: str | None) -> dict[str, str]:
    """Remember (``label`` None: forget) what a QuPath class means; returns the whole mapping."""
    mapping = remembered_mapping()
    if label is None:
        mapping.pop(qupath_class, None)
    else:
        mapping[qupath_class] = label
    atomic_write_text(class_map_path(), json.dumps({"classes": mapping}, indent=2, sort_keys=True) + "\n")
    return mapping


def known_label(name: str, valid: Sequence[str]) -> str | None:
    """``name`` as the model spells it when it is one of ``valid`` (categories and classes, any case), else None."""
    key = name.strip().lower()
    for v in valid:
        if v.lower() == key:
            return v
    return None


def valid_labels(class_names: Sequence[str], class_categories: Sequence[str]) -> list[str]:
    """What a region may be labelled for this model: its categories, then its classes."""
    cats = [c for c in CATEGORIES if c in class_categories]
    return cats + [c for c in class_names if c.lower() not in cats]


def mapping_choices(class_names: Sequence[str], class_categories: Sequence[str]) -> list[str]:
    """What the import dialog offers for an unknown QuPath class: the model's labels, then 'leave it out'."""
    return [*valid_labels(class_names, class_categories), LEAVE_OUT]


def pending_classes(regions: Sequence[LabelRegion], valid: Sequence[str],
                    mapping: Mapping[str, str] | None = None) -> list[str]:
    """QuPath classes among ``regions`` that are not labels of the model and have no usable mapping."""
    mapping = remembered_mapping() if mapping is None else mapping
    out = []
    for r in regions:
        if r.is_ignore or known_label(r.label, valid) is not None:
            continue
        target = mapping.get(r.label)
        if (target is None or (target != LEAVE_OUT and known_label(target, valid) is None)) and r.label not in out:
            out.append(r.label)
    return out


@dataclass(frozen=True)
class MappedRegions:
    """Regions as labels of the model: ``regions`` (mapped, in order), and what is pending or left out."""

    regions: tuple[LabelRegion, ...]
    pending: tuple[str, ...]  # QuPath classes without a mapping: not labels
    mapped: dict[str, str]  # QuPath class → the label it became
    left_out: tuple[str, ...]  # QuPath classes mapped to "leave out"

    def notes(self, where: str = "") -> list[str]:
        at = f"{where}: " if where else ""
        out = [f"{at}{cls} read as {label}" for cls, label in self.mapped.items()]
        if self.left_out:
            out.append(f"{at}left out as mapped: {', '.join(self.left_out)}")
        if self.pending:
            out.append(f"{at}not labels until mapped to a category or class of the model: "
                       f"{', '.join(self.pending)} (cellview adapt --map \"{self.pending[0]}=malignant\", or the "
                       "viewer's import)")
        return out


def apply_mapping(regions: Sequence[LabelRegion], valid: Sequence[str],
                  mapping: Mapping[str, str] | None = None) -> MappedRegions:
    """Regions whose class is a label (as the model spells it) or mapped to one; pending ones dropped.

    A region mapped to "leave out" becomes Ignore* only where it was Ignore* already; otherwise it is
    dropped too: an unknown class never takes a label away from tissue labelled before it.
    """
    mapping = remembered_mapping() if mapping is None else mapping
    out: list[LabelRegion] = []
    pending: list[str] = []
    mapped: dict[str, str] = {}
    left: list[str] = []
    for r in regions:
        if r.is_ignore:
            out.append(r)
            continue
        own = known_label(r.label, valid)
        if own is not None:
            out.append(r if own == r.label else LabelRegion(own, r.polygons))
            continue
        target = mapping.get(r.label)
        if target == LEAVE_OUT:
            if r.label not in left:
                left.append(r.label)
            continue
        label = known_label(target, valid) if target is not None else None
        if label is None:
            if r.label not in pending:
                pending.append(r.label)
            continue
        mapped[r.label] = label
        out.append(LabelRegion(label, r.polygons))
    return MappedRegions(tuple(out), tuple(pending), mapped, tuple(left))


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """``["Tumor=malignant", "Stroma=Ignore*"]`` → mapping (the CLI's ``--map``); ValueError names a bad one."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--map {item!r}: write QUPATH_CLASS=LABEL, e.g. Tumor=malignant")
        cls, label = (s.strip() for s in item.split("=", 1))
        if not cls or not label:
            raise ValueError(f"--map {item!r}: write QUPATH_CLASS=LABEL, e.g. Tumor=malignant")
        out[cls] = label
    return out
