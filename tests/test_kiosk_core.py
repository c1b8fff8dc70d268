"""Kiosk core without a display: settings file, watch folder, one case into the outbox, batch size."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from cellview.base.errors import CellviewError
from cellview.outputs.export import FORMATS
from cellview.viewer.kiosk.cases import (
    RECENT_FILE,
    CaseResult,
    RecentCases,
    analysed_in_outbox,
    free_stem,
    load_classifier,
    process_case,
)
from cellview.viewer.kiosk.settings import (
    KioskSettings,
    KioskSettingsError,
    SalvagedSettings,
    choose_batch_size,
    default_settings_path,
    mem_available_bytes,
    normalize_chord,
)
from cellview.viewer.kiosk.watch import WatchFolder, is_temporary_name


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def classifier(toy_model):
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_spec import ModelSpec

    return OnnxClassifier(ModelSpec.load(toy_model), device="cpu")


# ----------------------------------------------------------------------------- settings


def test_settings_round_trip(tmp_path):
    s = KioskSettings(watch_dir=tmp_path / "in", outbox_dir=tmp_path / "out", model="toy", device="cpu",
                      idle_s=60, exit_chord="ctrl+shift+alt+x", pin="0042", batch_size=8, formats=("csv", "png"))
    assert s.exit_chord == "Ctrl+Alt+Shift+X"
    assert s.formats == ("csv", "png", "json")  # metadata is always written
    file = s.save(tmp_path / "cfg" / "kiosk.json")
    assert KioskSettings.load(file) == s
    data = json.loads(file.read_text())
    assert data["pin"] == "0042" and data["watch_dir"] == str(tmp_path / "in")


def test_default_path_missing_gives_defaults_but_named_missing_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_settings_path() == tmp_path / "xdg" / "cellview" / "kiosk.json"
    assert KioskSettings.load() == KioskSettings()
    KioskSettings(idle_s=5).save()
    assert KioskSettings.load().idle_s == 5.0
    with pytest.raises(KioskSettingsError, match="does not exist"):
        KioskSettings.load(tmp_path / "nope.json")


def test_unknown_keys_are_reported_with_a_suggestion(tmp_path):
    file = tmp_path / "kiosk.json"
    file.write_text(json.dumps({"pim": "1234", "idle_s": 30, "colour": "red"}))
    with pytest.raises(KioskSettingsError) as err:
        KioskSettings.load(file)
    assert "'pim' (did you mean 'pin'?)" in err.value.message
    assert "'colour'" in err.value.message and str(file) in err.value.message
    assert isinstance(err.value, CellviewError)


@pytest.mark.parametrize("data, words", [
    ({"device": "tpu"}, "device"),
    ({"idle_s": -1}, "idle_s"),
    ({"idle_s": "soon"}, "idle_s"),
    ({"exit_chord": "Q"}, "two modifiers"),
    ({"exit_chord": "Ctrl+Alt"}, "exactly one key"),
    ({"exit_chord": "Ctrl+Alt+Foo"}, "unknown key"),
    ({"pin": 1234}, "quotes"),
    ({"pin": "12a4"}, "4 to 12 digits"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": "big"}, "batch_size"),
    ({"formats": ["csv", "pdf"]}, "pdf"),
    ({"formats": []}, "formats"),
    ({"recent_cases_max": 0}, "recent_cases_max"),
    ({"region_confidence": 2}, "region_confidence"),
    ({"mpp_um": 0}, "mpp_um"),
    ({"regions": "yes"}, "regions"),
])
def test_invalid_values_name_the_setting(tmp_path, data, words):
    file = tmp_path / "kiosk.json"
    file.write_text(json.dumps(data))
    with pytest.raises(KioskSettingsError, match=words):
        KioskSettings.load(file)


def test_bad_json_and_outbox_inside_watch_folder(tmp_path):
    file = tmp_path / "kiosk.json"
    file.write_text('{"idle_s": 30,}')
    with pytest.raises(KioskSettingsError, match="not valid JSON .line 1"):
        KioskSettings.load(file)
    file.write_text("[1, 2]")
    with pytest.raises(KioskSettingsError, match="JSON object"):
        KioskSettings.load(file)
    with pytest.raises(KioskSettingsError, match="outbox must not be the watch folder"):
        KioskSettings(watch_dir=tmp_path / "in", outbox_dir=tmp_path / "in" / "results")
    with pytest.raises(KioskSettingsError, match="outbox must not be the watch folder"):
        KioskSettings(watch_dir=tmp_path / "in", outbox_dir=tmp_path / "in")


def test_relative_paths_follow_the_settings_file_and_overrides_apply(tmp_path):
    file = tmp_path / "cfg" / "kiosk.json"
    file.parent.mkdir()
    file.write_text(json.dumps({"watch_dir": "in", "outbox_dir": "~/out"}))
    s = KioskSettings.load(file)
    assert s.watch_dir == tmp_path / "cfg" / "in"
    assert s.outbox_dir == Path.home() / "out"
    t = KioskSettings.load_lenient(file, watch_dir=str(tmp_path / "w"), outbox_dir=None, device="cpu").settings
    assert t.watch_dir == tmp_path / "w" and t.outbox_dir == s.outbox_dir and t.device == "cpu"


def test_pin_and_chord():
    assert KioskSettings().check_pin("anything")
    s = KioskSettings(pin="2468")
    assert s.check_pin("2468") and s.check_pin(" 2468 ") and not s.check_pin("2469")
    assert normalize_chord("Shift+Meta+f12") == "Shift+Meta+F12"
    assert normalize_chord("Alt + Control + Esc") == "Ctrl+Alt+Esc"
    with pytest.raises(KioskSettingsError, match="repeats"):
        normalize_chord("Ctrl+Ctrl+Q")


def write_json(file: Path, data) -> Path:
    file.write_text(json.dumps(data))
    return file


def test_lenient_load_keeps_valid_settings_and_reports_each_bad_one(tmp_path):
    file = write_json(tmp_path / "kiosk.json", {"idle_s": 30, "device": "tpu", "colour": "red", "pin": "2468",
                                                "formats": ["csv", "pdf"], "settle_s": 1, "workers": 0})
    loaded = KioskSettings.load_lenient(file)
    s = loaded.settings
    assert isinstance(loaded, SalvagedSettings) and loaded.path == file
    assert (s.idle_s, s.pin, s.settle_s) == (30.0, "2468", 1.0)  # the valid ones are kept
    assert (s.device, s.formats, s.workers) == ("auto", FORMATS, 2)  # the bad ones keep their defaults
    assert not loaded.exit_locked  # the PIN itself is fine: the chord still asks for it
    messages = [p.message for p in loaded.problems]
    assert len(messages) == 4 and all(m.startswith(f"{file}: ") for m in messages)
    for key, words in (("device", "must be one of"), ("colour", "Unknown setting"), ("formats", "pdf"),
                       ("workers", "whole number")):
        assert any(f"'{key}'" in m and words in m for m in messages), key
    assert all(isinstance(p, KioskSettingsError) for p in loaded.problems)


def test_lenient_load_survives_a_value_that_is_not_a_settings_error(tmp_path):
    file = write_json(tmp_path / "kiosk.json", {"watch_dir": "in\u0000box", "idle_s": 5})
    loaded = KioskSettings.load_lenient(file)  # a NUL byte in a path raises ValueError deep in pathlib
    assert loaded.settings.watch_dir is None and loaded.settings.idle_s == 5.0
    (problem,) = loaded.problems
    assert "'watch_dir' is invalid" in problem.message and "null byte" in problem.details


def test_lenient_load_of_a_good_file_equals_the_strict_load(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert KioskSettings.load_lenient() == SalvagedSettings(KioskSettings(), (), False, default_settings_path())
    file = KioskSettings(watch_dir=tmp_path / "in", outbox_dir=tmp_path / "out", pin="0042", idle_s=60,
                         formats=("csv",)).save(tmp_path / "kiosk.json")
    loaded = KioskSettings.load_lenient(file)
    assert loaded.settings == KioskSettings.load(file) and loaded.problems == () and not loaded.exit_locked


@pytest.mark.parametrize("content, words", [
    ('{"pin": "2468", "idle_s": 30,}', "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (b"\xff\xfe{", "Cannot read"),
])
def test_lenient_load_of_an_unusable_file_gives_defaults_and_locks_exit(tmp_path, content, words):
    file = tmp_path / "kiosk.json"
    if isinstance(content, bytes):
        file.write_bytes(content)
    elif content is not None:
        file.write_text(content)
    loaded = KioskSettings.load_lenient(file, outbox_dir=str(tmp_path / "out"))
    assert loaded.settings == KioskSettings(outbox_dir=tmp_path / "out")  # defaults, the override still applies
    assert len(loaded.problems) == 1 and words in loaded.problems[0].message
    assert str(file) in loaded.problems[0].message and "defaults apply" in loaded.problems[0].message
    assert loaded.exit_locked  # a PIN may have been set in it: fail closed


def test_a_named_settings_file_that_does_not_exist_gives_the_defaults_and_a_way_out(tmp_path):
    """Issue 19: no file, no PIN to lose: leaving the kiosk must not be disabled."""
    file = tmp_path / "nowhere" / "kiosk.json"
    loaded = KioskSettings.load_lenient(file, outbox_dir=str(tmp_path / "out"))
    assert loaded.settings == KioskSettings(outbox_dir=tmp_path / "out")
    assert not loaded.exit_locked
    assert len(loaded.problems) == 1 and "does not exist" in loaded.problems[0].message
    assert str(file) in loaded.problems[0].message and "defaults apply" in loaded.problems[0].message


@pytest.mark.parametrize("data", [{"pin": 2468}, {"pin": "24a8"}, {"pin": ""}, {"pim": "2468"}, {"PIN": "2468"},
                                  {"exit_pin": "2468"}])
def test_lenient_load_of_an_unusable_pin_locks_exit_without_showing_it(tmp_path, data):
    loaded = KioskSettings.load_lenient(write_json(tmp_path / "kiosk.json", {"idle_s": 30, **data}))
    assert loaded.exit_locked and loaded.settings.pin is None and loaded.settings.idle_s == 30.0
    (problem,) = loaded.problems
    assert "2468" not in problem.message and "2468" not in problem.details


def test_lenient_load_keeps_the_cross_field_check_and_applies_overrides_one_by_one(tmp_path):
    file = write_json(tmp_path / "kiosk.json", {"watch_dir": "in", "outbox_dir": "in/results", "device": "cpu"})
    loaded = KioskSettings.load_lenient(file)
    assert loaded.settings.watch_dir == tmp_path / "in" and loaded.settings.outbox_dir is None
    (problem,) = loaded.problems
    assert "outbox must not be the watch folder" in problem.message and "'outbox_dir' was ignored" in problem.message
    loaded = KioskSettings.load_lenient(file, watch_dir=str(tmp_path / "w"), outbox_dir=str(tmp_path / "w" / "o"),
                                        device="tpu", model=None)
    s = loaded.settings
    assert s.watch_dir == tmp_path / "w" and s.outbox() != tmp_path / "w" / "o" and s.device == "cpu"
    cli = [p.message for p in loaded.problems if p.message.startswith("Command line: ")]
    assert len(cli) == 2 and any("'outbox_dir'" in m for m in cli) and any("'device'" in m for m in cli)
    assert all("settings file's value applies" in m for m in cli)
    assert not loaded.exit_locked


# ----------------------------------------------------------------------------- watch folder


def test_file_written_slowly_in_chunks_is_returned_once_complete(tmp_path, synthetic_slide):
    watch = tmp_path / "in"
    watch.mkdir()
    (watch / "old.svs").write_bytes(b"present before the kiosk started")
    watcher = WatchFolder(watch, settle_s=0.6)  # 4× the pause between chunks: robust on a busy machine
    data = synthetic_slide.read_bytes()
    target = watch / "slow.tiff"
    chunks = 6
    step = len(data) // chunks + 1
    with open(target, "wb") as fh:
        for k in range(chunks):
            fh.write(data[k * step:(k + 1) * step])
            fh.flush()
            os.fsync(fh.fileno())
            for _ in range(3):
                assert watcher.poll() == [], "returned while still being written"
                time.sleep(0.05)
            assert target in watcher.waiting
    got: list[Path] = []
    deadline = time.monotonic() + 3.0
    while not got and time.monotonic() < deadline:
        got = watcher.poll()
        time.sleep(0.05)
    assert got == [target]
    assert target.read_bytes() == data
    time.sleep(0.65)
    assert watcher.poll() == [] and watcher.waiting == []


def test_settle_rules_with_a_fake_clock(tmp_path):
    clock = FakeClock()
    watch = tmp_path / "in"
    watch.mkdir()
    watcher = WatchFolder(watch, settle_s=2.0, clock=clock)
    for name in (".hidden.svs", "~$lock.svs", "copy.svs.part", "x.tiff.tmp", "backup.svs~", "notes.txt",
                 "data.crdownload"):
        (watch / name).write_bytes(b"x" * 10)
    (watch / ".sync").mkdir()
    (watch / ".sync" / "a.svs").write_bytes(b"x")
    (watch / "empty.svs").write_bytes(b"")
    slide = watch / "a.svs"
    slide.write_bytes(b"a" * 100)
    assert watcher.poll() == []
    clock.now += 1.0
    assert watcher.poll() == []
    clock.now += 1.0
    assert watcher.poll() == [slide]  # empty.svs is held back, the rest are not slides
    clock.now += 5.0
    assert watcher.poll() == []
    slide.write_bytes(b"b" * 200)  # replaced: a new case once it settles
    assert watcher.poll() == []
    clock.now += 2.0
    assert watcher.poll() == [slide]
    slide.unlink()
    assert watcher.poll() == []
    slide.write_bytes(b"b" * 200)  # deleted and dropped again: new
    watcher.poll()
    clock.now += 2.0
    assert watcher.poll() == [slide]


def test_dicom_folder_is_one_case_and_waits_for_all_files(tmp_path):
    clock = FakeClock()
    watch = tmp_path / "in"
    watch.mkdir()
    watcher = WatchFolder(watch, settle_s=1.0, clock=clock)
    case = watch / "case-17"
    case.mkdir()
    for i in range(3):
        (case / f"level{i}.dcm").write_bytes(b"d" * 50)
        assert watcher.poll() == []
        clock.now += 0.5
    clock.now += 1.0
    assert watcher.poll() == [case / "level0.dcm"]
    clock.now += 5.0
    assert watcher.poll() == []
    assert free_stem(tmp_path / "out", case / "level0.dcm") == "case-17"


def test_existing_files_ignored_outbox_and_unreachable_folder(tmp_path):
    clock = FakeClock()
    watch = tmp_path / "in"
    (watch / "results").mkdir(parents=True)
    (watch / "before.png").write_bytes(b"p" * 9)
    (watch / "results" / "out.png").write_bytes(b"p" * 9)
    w = WatchFolder(watch, settle_s=1.0, include_existing=True, ignore=[watch / "results"], clock=clock)
    w.poll()
    clock.now += 1.0
    assert w.poll() == [watch / "before.png"]
    gone = WatchFolder(tmp_path / "missing", settle_s=1.0, clock=clock)
    assert gone.poll() == [] and "not reachable" in (gone.problem or "")
    (tmp_path / "missing").mkdir()
    assert gone.poll() == [] and gone.problem is None


def test_temporary_names():
    assert is_temporary_name(".x.svs") and is_temporary_name("a.svs.PART") and is_temporary_name("a~")
    assert not is_temporary_name("slide.svs") and not is_temporary_name("tmp.svs")


# ----------------------------------------------------------------------------- cases


def test_process_case_writes_all_exports(tmp_path, synthetic_slide, classifier):
    settings = KioskSettings(outbox_dir=tmp_path / "out", batch_size="auto", png_size_px=512)
    events = []
    case = process_case(synthetic_slide, classifier, settings, on_event=events.append)
    assert case.status == "done", case.message
    assert set(case.outputs) == set(FORMATS)
    for fmt, p in case.outputs.items():
        assert p.parent == tmp_path / "out" and p.exists() and p.stat().st_size > 0, fmt
    assert case.outputs["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads(case.outputs["json"].read_text())
    assert meta["status"] == "complete" and meta["kiosk"]["source"] == str(synthetic_slide)
    assert json.loads(case.outputs["geojson"].read_text())["type"] == "FeatureCollection"
    assert case.category_counts["malignant"] > 0 and case.provider == "CPU"
    assert type(events[0]).__name__ == "Started" and type(events[-1]).__name__ == "Finished"
    again = process_case(synthetic_slide, classifier, settings)
    assert again.outputs["csv"].name == "synthetic_2.csv"  # an earlier case is never overwritten


def test_corrupt_file_fails_cleanly_and_the_next_case_works(tmp_path, synthetic_slide, classifier):
    clock = FakeClock()
    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    settings = KioskSettings(watch_dir=watch, outbox_dir=out, settle_s=1.0, formats=("csv", "json"))
    watcher = WatchFolder.for_settings(settings)
    watcher.clock = clock
    (watch / "truncated.tiff").write_bytes(synthetic_slide.read_bytes()[:5000])
    (watch / "garbage.svs").write_bytes(os.urandom(4096))
    watcher.poll()
    clock.now += 1.0
    cases = [process_case(p, classifier, settings) for p in watcher.poll()]
    assert [c.status for c in cases] == ["failed", "failed"]
    assert all(c.message and not c.outputs for c in cases)
    assert any("truncated" in c.message or "damaged" in c.message for c in cases)
    shutil.copy(synthetic_slide, watch / "good.tiff")
    watcher.poll()
    clock.now += 1.0
    (good,) = watcher.poll()
    case = process_case(good, classifier, settings)
    assert case.ok and sorted(p.name for p in out.iterdir()) == ["good.csv", "good.json"]


def test_missing_pixel_size_is_a_failed_case(tmp_path, classifier):
    import cv2
    import numpy as np

    png = tmp_path / "noscale.png"
    cv2.imwrite(str(png), np.full((300, 300, 3), 200, np.uint8))
    case = process_case(png, classifier, KioskSettings(outbox_dir=tmp_path / "out"))
    assert case.status == "failed" and case.message
    # issue 19: the kiosk's own advice (the screen's scale entry, mpp_um in kiosk.json), never "--mpp"
    assert case.needs_scale and "--" not in case.message
    assert '"mpp_um"' in case.message and str(default_settings_path()) in case.message
    assert case.headline == "pixel size unknown: tap to choose the magnification"  # one line in the list
    chosen = process_case(png, classifier, KioskSettings(outbox_dir=tmp_path / "out"), mpp_um=0.5)
    assert chosen.ok and json.loads(chosen.outputs["json"].read_text())["slide"]["mpp_source"] == "user"


def test_a_long_error_is_one_line_in_the_recent_cases(tmp_path):
    long = CaseResult(tmp_path / "x.svs", "failed", "x.svs is damaged: " + "the frame offsets point outside " * 10
                      + ". Try another copy.")
    assert len(long.headline) <= 90 and long.headline.endswith("…") and "Try another copy" not in long.headline
    ok = CaseResult(tmp_path / "y.svs", "done", "y.svs: no tile in the model's domain")
    assert ok.headline == "no tile in the model's domain"


def test_at_start_the_slides_not_yet_in_the_outbox_are_analysed_oldest_first(tmp_path, synthetic_slide, classifier):
    """Issue 19: slides dropped while the kiosk was off (or before a crash) were never analysed."""
    clock = FakeClock()
    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    settings = KioskSettings(watch_dir=watch, outbox_dir=out, settle_s=1.0, formats=("csv", "json"))
    paths = [watch / f"{name}.tiff" for name in ("done", "newer", "older", "replaced")]
    for age, path in zip((400, 100, 300, 200), paths):
        shutil.copy(synthetic_slide, path)
        os.utime(path, (time.time() - age, time.time() - age))
    assert process_case(paths[0], classifier, settings).ok  # in the outbox already
    assert process_case(paths[3], classifier, settings).ok
    os.utime(paths[3], None)  # …then replaced by a newer file: not done any more
    watcher = WatchFolder.for_settings(settings, include_existing=True, skip_existing=analysed_in_outbox(out))
    watcher.clock = clock
    assert [p.name for p in watcher.backlog] == ["older.tiff", "newer.tiff", "replaced.tiff"]
    watcher.poll()
    clock.now += 1.0
    assert watcher.poll() == [paths[2], paths[1], paths[3]]  # oldest first
    assert WatchFolder.for_settings(settings).backlog == []  # without include_existing: as before


def test_a_case_the_kiosk_stopped_on_is_known_at_the_next_start(tmp_path):
    recent = RecentCases(tmp_path / "out" / RECENT_FILE)
    assert recent.interrupted() is None
    recent.begin(tmp_path / "crashes.svs")
    assert RecentCases(tmp_path / "out" / RECENT_FILE).interrupted() == tmp_path / "crashes.svs"  # after a restart
    recent.add(CaseResult(tmp_path / "crashes.svs", "done", "fine after all"))
    assert recent.interrupted() is None


def test_recent_cases_bounded_persisted_and_robust(tmp_path):
    file = tmp_path / "out" / RECENT_FILE
    recent = RecentCases(file, max_items=3)
    for i in range(5):
        recent.add(CaseResult(tmp_path / f"s{i}.svs", "done", f"case {i}", outputs={"csv": tmp_path / f"s{i}.csv"}))
    recent.add(CaseResult(tmp_path / "s3.svs", "failed", "again"))
    names = [c.path.name for c in recent.items]
    assert names == ["s3.svs", "s4.svs", "s2.svs"]
    reloaded = RecentCases(file, max_items=3)
    assert reloaded.items == recent.items
    file.write_text("{broken")
    assert RecentCases(file).items == ()
    assert RecentCases.for_settings(KioskSettings(outbox_dir=tmp_path / "o")).path == tmp_path / "o" / RECENT_FILE


# ----------------------------------------------------------------------------- memory


def test_choose_batch_size_rule(tmp_path):
    gb = 10**9
    assert choose_batch_size(224, 2 * gb) == 8
    assert choose_batch_size(224, 6 * gb) == 32
    assert choose_batch_size(224, 64 * gb) == 64
    assert choose_batch_size(224, 10**6) == 1
    assert choose_batch_size(512, 8 * gb) < choose_batch_size(224, 8 * gb)
    assert 1 <= choose_batch_size(224) <= 64
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemFree:  100 kB\nMemAvailable:  4000000 kB\n")
    assert mem_available_bytes(meminfo) == 4_096_000_000
    s = KioskSettings(batch_size="auto")
    assert s.analysis_params(224, 2 * gb).batch_size == 8
    assert KioskSettings(batch_size=12).analysis_params(224, 2 * gb).batch_size == 12


def test_load_classifier_and_a_missing_model(tmp_path, toy_model):
    from cellview.base.errors import ModelError

    assert load_classifier(KioskSettings(model=str(toy_model), device="cpu")).provider_label == "CPU"
    with pytest.raises(ModelError):
        load_classifier(KioskSettings(model=str(tmp_path / "none.onnx"), device="cpu"))
