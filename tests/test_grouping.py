"""Groups for data without patient ids: runs of file numbers, near-duplicates, and the advice `cellview train --data`
gives for a folder without groups (synthetic folders; no torch needed for the rules themselves)."""

from __future__ import annotations

import numpy as np
import pytest

from cellview.train import data as D
from cellview.train.grouping import advise, assign_groups, name_number, number_runs


def _folder(tmp_path, layout: dict[str, list[str]], seed: int = 0) -> D.Recipe:
    """Class folders of tiny distinct PNGs named as given."""
    import cv2

    rng = np.random.default_rng(seed)
    for label, names in layout.items():
        (tmp_path / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            cv2.imwrite(str(tmp_path / label / name), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    return D.recipe_from_args([str(tmp_path)], '{"a": "benign", "b": "malignant"}', 0.5, 224, "toy")


def test_name_number_reads_the_trailing_digits():
    assert name_number("x/WBC-Benign-012.jpg") == ("WBC-Benign-", 12)
    assert name_number("WBC_Healthy_7.png") == ("WBC_Healthy_", 7)
    assert name_number("scan.tif") is None


def test_runs_end_at_a_missing_number(tmp_path):
    recipe = _folder(tmp_path, {"a": [f"s-{i:03d}.png" for i in (1, 2, 3, 7, 8, 20)],
                                "b": [f"s-{i:03d}.png" for i in (1, 2, 5, 6)]})
    samples = D.read_samples(recipe)
    groups, info = number_runs(samples)
    by_name = {(s.raw_label, name_number(s.path)[1]): g for s, g in zip(samples, groups, strict=True)}
    assert by_name[("a", 1)] == by_name[("a", 2)] == by_name[("a", 3)] != by_name[("a", 7)]
    assert by_name[("a", 7)] == by_name[("a", 8)] != by_name[("a", 20)]
    assert by_name[("b", 1)] != by_name[("a", 1)]  # the same numbers in another class are another series
    assert info["runs"] == 5 and info["runs_per_label"] == {"a": 3, "b": 2} and info["single_run_labels"] == []


def test_a_folder_without_groups_gets_a_warning_and_the_rule_its_names_fit(tmp_path):
    numbered = _folder(tmp_path / "numbered", {"a": [f"f{i}.png" for i in (*range(1, 11), *range(30, 40))],
                                               "b": [f"f{i}.png" for i in (*range(1, 9), *range(50, 60))]})
    advice = advise(D.read_samples(numbered))
    assert not advice.has_groups and advice.suggestion == "runs" and advice.runs == 4
    assert "--group runs" in advice.warning("numbered/") and "memory" in advice.warning("numbered/")
    named = _folder(tmp_path / "named", {"a": ["left.png", "right.png", "top.png"], "b": ["one.png", "two.png"]})
    advice = advise(D.read_samples(named))
    assert advice.suggestion == "near-duplicates" and "--group near-duplicates" in advice.warning("named/")
    csv = tmp_path / "grouped.csv"
    csv.write_text("path,label,group\n" + "".join(f"numbered/a/f{i}.png,a,p{i % 3}\n" for i in range(1, 11)))
    grouped = D.read_samples(D.recipe_from_args([str(csv)], '{"a": "benign", "b": "malignant"}', 0.5, 224, "g"))
    assert advise(grouped).has_groups and advise(grouped).warning("grouped.csv") == ""


def test_assign_groups_runs_and_single_run_classes_fall_back_to_near_duplicates(tmp_path):
    recipe = _folder(tmp_path, {"a": [f"s-{i}.png" for i in (1, 2, 3, 10, 11)], "b": [f"s-{i}.png" for i in range(1, 6)]})
    samples = D.read_samples(recipe)
    seen: list[int] = []

    def embed(part):  # class b is one unbroken run: only its images are embedded; two look-alike pairs
        seen.append(len(part))
        return np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1], [-1, 0]], np.float32)[: len(part)]

    out, info, _ = assign_groups(samples, recipe, embed, override="runs", say=lambda _: None)
    assert seen == [5] and info["runs"]["single_run_labels"] == ["b"]
    a = {name_number(s.path)[1]: s.group for s in out if s.raw_label == "a"}
    assert len(set(a.values())) == 2 and a[1] == a[2] == a[3] != a[10] == a[11]
    b = [s.group for s in out if s.raw_label == "b"]  # s-1 … s-5: name order is number order
    assert b[0] == b[1] and b[2] == b[3] and len(set(b)) == 3
    images, _, _ = assign_groups(samples, recipe, embed, override="images", say=lambda _: None)
    assert len({s.group for s in images}) == len(samples)
    with pytest.raises(D.DataError, match="Unknown grouping"):
        assign_groups(samples, recipe, embed, override="patients", say=lambda _: None)


def test_identical_files_join_one_group_whatever_the_rule(tmp_path):
    recipe = _folder(tmp_path, {"a": ["s-1.png", "s-5.png"], "b": ["s-1.png", "s-2.png"]})
    (tmp_path / "a" / "s-5.png").write_bytes((tmp_path / "a" / "s-1.png").read_bytes())
    out, info, _ = assign_groups(D.read_samples(recipe), recipe, lambda p: np.eye(len(p)), override="runs",
                                 say=lambda _: None)
    a = [s.group for s in out if s.raw_label == "a"]
    assert a[0] == a[1] and info["groups_merged_for_identical_files"] == 1
