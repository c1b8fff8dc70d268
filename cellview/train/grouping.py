"""Groups: the unit that must never straddle a split or a fold (a patient, a slide, a smear).

A source names its rule (``Source.group_by``):

- ``column``: the CSV's group column (patient ids). A folder of class folders has none, so every image is
  its own group there.
- ``runs``: runs of file numbers. Where files are numbered in acquisition order (``smear-001.jpg``,
  ``smear-002.jpg`` …) consecutive numbers are fields of the same smear or patient, so a run of consecutive
  numbers is one group and a missing number ends it. A class that is one unbroken run says nothing about
  acquisition (its files were simply numbered 1…N), so its images are grouped by near-duplicates instead.
- ``near-duplicates``: images that look alike (``near_duplicate_groups``: embeddings averaged over the 8
  flips / rotations, cosine similarity ≥ threshold between mutual nearest neighbours, connected components).
- ``images``: every image alone — a random image split, which is a memory test on data like the above.

Byte-identical files are merged into one group whatever the rule (``data.merge_identical_files``).
``advise`` tells ``cellview train --data`` when a folder has no groups and which rule fits its names.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellview.train import data as D
from cellview.train.splits import nearest_neighbour_similarity, similarity_groups

GROUP_RULES = ("column", "runs", "near-duplicates", "images")
"""What a source's ``group_by`` may say (see the module docstring)."""

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def name_number(path: str) -> tuple[str, int] | None:
    """(prefix, number) of a file name ending in digits ('WBC-Benign-012.jpg' → ('WBC-Benign-', 12)), else None."""
    m = _NUMBERED.match(Path(path).stem)
    return (m.group(1), int(m.group(2))) if m else None


def _series_key(s: D.Sample) -> tuple[str, str, str, str] | None:
    """The series a numbered file belongs to: same source, label, folder and name prefix."""
    got = name_number(s.path)
    if got is None:
        return None
    return s.source, s.raw_label, str(Path(s.path).parent), got[0]


def number_runs(samples: Sequence[D.Sample], max_gap: int = 1) -> tuple[list[str], dict[str, Any]]:
    """A group per run of consecutive file numbers (a step larger than ``max_gap`` ends a run).

    Returns the groups (files without a number keep their own) and what was found: runs per label, run
    lengths, and the labels that are one unbroken run (``single_run_labels``; see the module docstring).
    """
    groups = [s.group for s in samples]
    series: dict[tuple[str, str, str, str], list[tuple[int, int]]] = {}
    unnumbered = 0
    for i, s in enumerate(samples):
        key = _series_key(s)
        if key is None:
            unnumbered += 1
            continue
        series.setdefault(key, []).append((name_number(s.path)[1], i))  # type: ignore[index]
    lengths: list[int] = []
    per_label: dict[str, int] = {}
    runs_of: dict[tuple[str, str], int] = {}
    for (source, label, _, prefix), items in sorted(series.items()):
        items.sort()
        start = prev = None
        members: list[int] = []
        for number, i in [*items, (None, -1)]:
            if prev is not None and (number is None or number - prev > max_gap):
                for k in members:
                    groups[k] = f"{source}:run:{label}/{prefix}{start}-{prev}"
                lengths.append(len(members))
                per_label[label] = per_label.get(label, 0) + 1
                runs_of[(source, label)] = runs_of.get((source, label), 0) + 1
                members, start = [], None
            if number is None:
                break
            start = number if start is None else start
            prev = number
            members.append(i)
    single = sorted({label for (_, label), n in runs_of.items() if n == 1})
    info = {
        "rule": f"runs of consecutive file numbers (a gap of more than {max_gap} ends a run), per class and name prefix",
        "runs": len(lengths),
        "runs_per_label": per_label,
        "run_length_median": float(statistics.median(lengths)) if lengths else 0.0,
        "run_length_max": max(lengths, default=0),
        "unnumbered_images": unnumbered,
        "single_run_labels": single,
    }
    return groups, info


# ----------------------------------------------------------------------------- near-duplicates


def near_duplicate_groups(samples: list[D.Sample], embed: Callable[[list[D.Sample]], np.ndarray], threshold: float,
                          mutual_k: int = 0, patch: int = 224,
                          class_names: Sequence[str] = ()) -> tuple[list[str], dict[str, Any], np.ndarray]:
    """Group look-alikes: ``embed`` gives each image's embedding (``train.dup_embeddings``: averaged over the 8
    flips / rotations), then connected components of similarity (see ``splits.similarity_groups``)."""
    emb = embed(samples)
    comp = similarity_groups(emb, threshold, mutual_k)
    nn_sim = nearest_neighbour_similarity(emb)
    labels = np.array([s.label for s in samples])
    names = list(class_names) or [str(c) for c in range(int(labels.max()) + 1)]
    per_class = {names[c]: int(len(np.unique(comp[labels == c]))) for c in np.unique(labels)}
    sizes = np.bincount(comp)
    info = {
        "method": "connected components of cosine similarity >= threshold between dihedral-averaged "
                  f"{patch}px EfficientNet-Lite0 embeddings"
                  + (f", edges only between mutual {mutual_k}-nearest neighbours" if mutual_k else ""),
        "threshold": threshold,
        "mutual_k": mutual_k,
        "groups": int(comp.max() + 1),
        "groups_per_class": per_class,
        "largest_group": int(sizes.max()),
        "singletons": int((sizes == 1).sum()),
        "nn_similarity_percentiles": {str(p): round(float(np.percentile(nn_sim, p)), 4) for p in (5, 25, 50, 75, 95)},
        "mixed_class_groups": int(sum(len(np.unique(labels[comp == g])) > 1 for g in range(comp.max() + 1))),
    }
    return [f"dup{c}" for c in comp], info, emb


# ----------------------------------------------------------------------------- a recipe's groups


def assign_groups(samples: list[D.Sample], recipe: D.Recipe, embed: Callable[[list[D.Sample]], np.ndarray],
                  override: str | None = None,
                  say: Callable[[str], None] = print) -> tuple[list[D.Sample], dict[str, Any], np.ndarray | None]:
    """Every sample's group by its source's rule (``override``: one rule for every source), then byte-identical
    files merged. Returns the samples, what was done (for summary.json and the card) and the near-duplicate
    embeddings when they were computed (None otherwise)."""
    rules = {s.name or Path(s.path).stem: (override or s.group_by) for s in recipe.sources}
    if recipe.group_near_duplicates and not override:
        rules = dict.fromkeys(rules, "near-duplicates")
    bad = sorted({r for r in rules.values() if r not in GROUP_RULES})
    if bad:
        raise D.DataError(f"Unknown grouping {bad[0]!r}; use one of {', '.join(GROUP_RULES)}.")
    groups = [s.group for s in samples]
    info: dict[str, Any] = {"rules": rules}
    dup = np.zeros(len(samples), bool)
    for i, s in enumerate(samples):
        rule = rules.get(s.source, "column")
        if rule == "images":
            groups[i] = f"{s.source}:image:{i}"
        elif rule == "near-duplicates":
            dup[i] = True
    run_idx = [i for i, s in enumerate(samples) if rules.get(s.source) == "runs"]
    if run_idx:
        got, runs = number_runs([samples[i] for i in run_idx])
        info["runs"] = runs
        single = set(runs["single_run_labels"])
        for k, i in enumerate(run_idx):
            if samples[i].raw_label in single:
                dup[i] = True  # one unbroken run: its numbers say nothing about acquisition
            else:
                groups[i] = got[k]
        say(f"runs of file numbers: {runs['runs']} runs ({runs['runs_per_label']}), median {runs['run_length_median']:g} "
            f"images" + (f"; {', '.join(sorted(single))}: one unbroken run each, grouped by near-duplicates instead"
                         if single else ""))
    emb = None
    if dup.any():
        idx = np.flatnonzero(dup)
        part = [samples[i] for i in idx]
        dup_groups, info["near_duplicates"], emb = near_duplicate_groups(
            part, embed, recipe.group_threshold, recipe.group_mutual_k, recipe.patch_size, recipe.class_names)
        for i, g in zip(idx, dup_groups, strict=True):
            groups[i] = f"{samples[i].source}:{g}"
        say(f"near-duplicate groups: {info['near_duplicates']['groups']} ({info['near_duplicates']['groups_per_class']})")
        if len(idx) < len(samples):
            full = np.zeros((len(samples), emb.shape[1]), np.float32)
            full[idx] = emb
            emb = full
    out = [D.Sample(**{**asdict(s), "group": g}) for s, g in zip(samples, groups, strict=True)]
    out, merged = D.merge_identical_files(out)
    info["groups"] = len({s.group for s in out})
    info["groups_merged_for_identical_files"] = merged
    return out, info, emb


# ----------------------------------------------------------------------------- advice for --data


@dataclass(frozen=True)
class GroupingAdvice:
    """Whether labelled data without groups should be grouped, and how (``cellview train --data``)."""

    images: int
    has_groups: bool
    numbered_share: float
    runs: int
    run_length_median: float
    suggestion: str  # "runs", "near-duplicates" or "" (the data has groups)

    def warning(self, where: str) -> str:
        """The words ``cellview train`` prints when the data has no groups ('' when it has)."""
        if self.has_groups:
            return ""
        head = (f"{where} has no groups (patients, slides, smears): every image is its own group, so fields of one "
                "smear or patient can land on both sides of a split and the figures measure memory, not skill.")
        if self.suggestion == "runs":
            how = (f"Its file names are numbered ({self.runs} runs of consecutive numbers, median "
                   f"{self.run_length_median:g} images): --group runs keeps each run together.")
        else:
            how = ("Its file names are not numbered in runs: --group near-duplicates keeps images that look alike "
                   "together.")
        return f"{head}\n  {how}"


def advise(samples: Sequence[D.Sample]) -> GroupingAdvice:
    """Look at the samples' groups and names: no groups → suggest runs when names run in sequence, else near-duplicates."""
    n = len(samples)
    has_groups = len({s.group for s in samples}) < n
    numbered = sum(name_number(s.path) is not None for s in samples)
    _, info = number_runs(samples) if numbered else ([], {"runs": 0, "run_length_median": 0.0, "runs_per_label": {}})
    labels = {s.raw_label for s in samples}
    several_runs = any(v >= 2 for v in info["runs_per_label"].values()) if info["runs"] else False
    sequential = n > 0 and numbered / n >= 0.9 and info["run_length_median"] >= 2 and several_runs and len(labels) >= 1
    suggestion = "" if has_groups else ("runs" if sequential else "near-duplicates")
    return GroupingAdvice(n, has_groups, numbered / n if n else 0.0, int(info["runs"]),
                          float(info["run_length_median"]), suggestion)
