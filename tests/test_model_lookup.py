"""Where a model name is looked up: $CELLVIEW_MODELS_DIR, then the user's folder, then the bundled models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cellview.analysis.model_lookup import (
    ModelEntry,
    available_models,
    bundled_models_dir,
    model_entries,
    model_roots,
    resolve_model,
    user_models_dir,
)
from cellview.base.errors import ModelError
from cellview.cli import main
from cellview.testing.synthetic import make_toy_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def three_roots(tmp_path, monkeypatch):
    """env: a, shared; user: shared, b; bundled: shared, c (toy models, 16 px)."""
    roots = {origin: tmp_path / origin for origin in ("env", "user", "bundled")}
    for origin, names in (("env", ("a", "shared")), ("user", ("shared", "b")), ("bundled", ("shared", "c"))):
        for name in names:
            make_toy_model(roots[origin] / name, patch_px=16, spacing_um=1.0)
    monkeypatch.setenv("CELLVIEW_MODELS_DIR", str(roots["env"]))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "cellview").mkdir(parents=True)
    (tmp_path / "xdg" / "cellview" / "models").symlink_to(roots["user"])
    monkeypatch.setattr("cellview.analysis.model_lookup.bundled_models_dir", lambda: roots["bundled"])
    return roots


def test_user_models_dir_follows_the_platform_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert user_models_dir() == tmp_path / "cellview" / "models"


def test_lookup_order_env_then_user_then_bundled(three_roots):
    assert [r.origin for r in model_roots()] == ["env", "user", "bundled"]
    found = available_models()
    assert list(found) == ["a", "shared", "b", "c"]  # root by root, by name within a root
    assert found["shared"] == three_roots["env"] / "shared" / "model.onnx"  # the earlier root wins
    assert resolve_model("shared") == three_roots["env"] / "shared" / "model.onnx"
    assert resolve_model("b").parent.parent.resolve() == three_roots["user"]
    assert resolve_model("c") == three_roots["bundled"] / "c" / "model.onnx"


def test_without_the_env_variable_the_user_folder_wins(three_roots, monkeypatch):
    monkeypatch.delenv("CELLVIEW_MODELS_DIR")
    assert [r.origin for r in model_roots()] == ["user", "bundled"]
    assert resolve_model("shared").parent.parent.resolve() == three_roots["user"]
    with pytest.raises(ModelError, match="No model named 'a'; available: b, c, shared"):
        resolve_model("a")


def test_hidden_models_are_listed_with_what_hides_them(three_roots):
    rows = [(e.name, e.origin, e.hidden_by) for e in model_entries(include_hidden=True)]
    assert rows == [("a", "env", ""), ("shared", "env", ""), ("b", "user", ""), ("shared", "user", "env"),
                    ("c", "bundled", ""), ("shared", "bundled", "env")]
    assert all(isinstance(e, ModelEntry) for e in model_entries())
    assert [e.name for e in model_entries()] == ["a", "shared", "b", "c"]


def test_a_folder_named_twice_counts_once(three_roots, monkeypatch):
    monkeypatch.setenv("CELLVIEW_MODELS_DIR", str(three_roots["bundled"]))
    assert [r.origin for r in model_roots()] == ["env", "user"]
    assert [r.origin for r in model_roots(keep_duplicates=True)] == ["env", "user", "bundled"]
    assert [e.origin for e in model_entries(include_hidden=True) if e.name == "c"] == ["env"]


def test_resolve_model_says_plainly_when_none(tmp_path, monkeypatch, no_bundled_models):
    monkeypatch.setenv("CELLVIEW_MODELS_DIR", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="No model found"):
        resolve_model(None)
    make_toy_model(tmp_path / "empty" / "toy")
    assert resolve_model("toy").name == "model.onnx"
    with pytest.raises(ModelError, match="available: toy"):
        resolve_model("colon-he")


def test_an_explicit_path_is_used_as_it_is(three_roots, tmp_path):
    other = make_toy_model(tmp_path / "elsewhere" / "shared", patch_px=16, spacing_um=1.0)
    assert resolve_model(str(other)) == other
    assert resolve_model(str(other.parent)) == other.parent


def test_one_root_can_still_be_scanned_alone(three_roots):
    assert list(available_models(three_roots["user"])) == ["b", "shared"]


def test_cellview_models_prints_the_lookup_and_the_origin_of_each_model(three_roots, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lookup, listing = out.split("\n\n")
    lines = lookup.splitlines()
    assert "--model PATH" in lines[1]
    assert "$CELLVIEW_MODELS_DIR" in lines[2] and str(three_roots["env"]) in lines[2]
    assert "your models folder" in lines[3] and "cellview export / adapt save here" in lines[3]
    assert "bundled with CellView" in lines[4] and str(three_roots["bundled"]) in lines[4]
    rows = listing.splitlines()
    assert rows[0].startswith("a ($CELLVIEW_MODELS_DIR): 3 classes")
    assert rows[3].startswith("shared (your models folder): hidden by the shared in $CELLVIEW_MODELS_DIR")
    assert rows[4].startswith("c (bundled with CellView): 3 classes")


def test_cellview_models_with_no_model_anywhere(capsys, no_bundled_models):
    assert main(["models"]) == 1
    out = capsys.readouterr().out
    assert "none in this install" in out and "No models found in these folders." in out


def test_the_checkout_serves_as_the_bundled_models():
    """An editable install or a source checkout: the repository's models/ are the bundled ones."""
    bundled = bundled_models_dir()
    assert bundled is not None and (bundled / "colon-he" / "model.onnx").is_file()
    assert bundled.resolve() in {REPO / "models", REPO / "cellview" / "models"}
    assert [e.origin for e in model_entries() if e.name == "colon-he"] == ["bundled"]
    assert resolve_model(None) == bundled / "colon-he" / "model.onnx"


def test_a_model_in_the_user_folder_hides_the_bundled_one(tmp_path):
    bundled = resolve_model("colon-he")
    mine = make_toy_model(user_models_dir() / "colon-he", patch_px=16, spacing_um=1.0)
    try:
        assert resolve_model("colon-he") == mine
        assert [(e.origin, e.hidden_by) for e in model_entries(include_hidden=True) if e.name == "colon-he"] == [
            ("user", ""), ("bundled", "user")]
    finally:
        shutil.rmtree(mine.parent)
    assert resolve_model("colon-he") == bundled


def test_export_goes_to_the_user_models_folder_by_default(tmp_path, monkeypatch):
    """`cellview export RUN` without --out writes <user models>/<recipe name>, where the lookup finds it."""
    pytest.importorskip("torch")

    from cellview.cli import build_parser

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    shutil.copy(REPO / "cellview" / "train" / "recipes" / "lung-he.json", run / "recipe.json")
    written = []
    monkeypatch.setattr("cellview.train.export.export_run",
                        lambda run_dir, out_dir, *a, **k: written.append(out_dir))
    parser = build_parser()
    args = parser.parse_args(["export", str(run)])
    assert args.func(args) == 0
    assert written == [user_models_dir() / "lung-he"]
