"""The model card's slide-call section (issue 25) is written from protocol.json's ``slide_call`` report, so
``cellview export`` can write it again: a re-export of the same training keeps the call's validated thresholds in
the sidecar, the report in protocol.json and the section in the card (tests/test_train.py runs the export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellview.train.slide_call_card import CARD_END, CARD_START, card_section, carry_over, insert_section, previous_call

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("model", ["colon-he", "lung-he", "blood-all"])
def test_each_bundled_cards_slide_call_section_is_the_one_its_protocol_json_writes(model):
    report = json.loads((MODELS / model / "protocol.json").read_text())["slide_call"]
    card = (MODELS / model / "MODEL_CARD.md").read_text()
    section = card_section(report)
    assert section in card and card.count(CARD_START) == 1
    side = json.loads((MODELS / model / "model.json").read_text())["call"]
    # the rule, its thresholds and held-out sensitivity / specificity, the call against the vote
    assert f"confidence ≥ {side['malignant']['min_confidence']:g}" in section
    assert "| **slide call** |" in section and "| vote |" in section
    assert "malignant sensitivity | specificity" in section and "bal. acc." in section


def test_the_section_replaces_an_earlier_one_or_goes_before_adapting(tmp_path):
    report = json.loads((MODELS / "colon-he" / "protocol.json").read_text())["slide_call"]
    bare = "# m\n\n## Headline: x\n\ntable\n\n## Adapting to a lab's labels\n\ncurve\n\n## Model\n- m\n"
    once = insert_section(bare, report)
    assert once.index("## Headline") < once.index(CARD_START) < once.index("## Adapting") < once.index("## Model")
    assert insert_section(once, report) == once  # written again: in place, once
    stale = once.replace("the worst finding first", "the largest share")
    assert insert_section(stale, report) == once
    assert insert_section("# m\n", report).endswith(CARD_END + "\n")


def _export(out: Path, name: str, training_data: str, call: dict | None, report: dict | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    side = {"name": name, "training_data": training_data}
    if call is not None:
        side["call"] = call
    (out / "model.json").write_text(json.dumps(side))
    (out / "protocol.json").write_text(json.dumps({"slide_call": report} if report else {}))


def test_a_re_export_of_the_same_training_keeps_the_call_and_another_does_not(tmp_path, capsys):
    call = json.loads((MODELS / "colon-he" / "model.json").read_text())["call"]
    report = json.loads((MODELS / "colon-he" / "protocol.json").read_text())["slide_call"]
    _export(tmp_path / "a", "colon-he", "glas (85 images)", call, report)
    side = {"name": "colon-he", "training_data": "glas (85 images)"}
    assert carry_over(previous_call(tmp_path / "a"), side) == report and side["call"] == call
    other = {"name": "colon-he", "training_data": "glas (84 images)"}
    assert carry_over(previous_call(tmp_path / "a"), other) is None and "call" not in other
    assert "bench/slide_call.py --models colon-he --write" in capsys.readouterr().err
    assert previous_call(tmp_path / "nothing") is None
    _export(tmp_path / "b", "colon-he", "glas (85 images)", None, report)  # a sidecar without thresholds
    assert previous_call(tmp_path / "b") is None
    (tmp_path / "b" / "model.json").write_text("{not json")
    assert previous_call(tmp_path / "b") is None


def test_a_card_without_chosen_thresholds_says_what_the_call_means_and_that_its_errors_are_not_measured():
    from cellview.analysis.callrule import DEFAULT_THRESHOLDS
    from cellview.train.slide_call_card import default_section, insert_text

    section = default_section("my-model")
    assert section.startswith(CARD_START) and section.rstrip().endswith(CARD_END)
    assert DEFAULT_THRESHOLDS.describe("malignant") in section and DEFAULT_THRESHOLDS.describe("benign") in section
    assert "not chosen or validated for this model" in section
    assert "bench/slide_call.py --models my-model --write" in section
    card = insert_text("# m\n\n## Headline: x\n\n## Model\n- m\n", section)
    assert card.index("## Headline") < card.index(CARD_START) < card.index("## Model")
    report = json.loads((MODELS / "colon-he" / "protocol.json").read_text())["slide_call"]
    chosen = insert_section(card, report)  # chosen later: the figures replace the default words
    assert chosen.count(CARD_START) == 1 and "not chosen or validated" not in chosen
