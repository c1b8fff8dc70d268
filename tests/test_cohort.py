"""Cohorts on a Dask LocalCluster: retries after worker deaths, Ctrl-C and resume, concurrent clients.

One LocalCluster (2 worker processes, conftest.dask_cluster) is shared by the session. Worker deaths are caused by the
test hook in cellview.scale.cohort (FAULT_ENV): marker files make a worker call os._exit in the middle
of a slide. Waits are on files and processes with generous timeouts, never fixed sleeps.
"""

from __future__ import annotations

import csv
import html.parser
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("distributed")

from cellview.cli import main  # noqa: E402
from cellview.outputs.cohort_report import CSV_COLUMNS, THUMBS_DIR  # noqa: E402
from cellview.scale.cohort import FAULT_ENV  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SLOW = 120  # seconds: generous bound for anything that waits on the cluster on a loaded CI machine


@pytest.fixture()
def slides(tmp_path, synthetic_slide) -> list[Path]:
    """Four copies of the synthetic slide (56 tissue tiles each) under distinct names."""
    folder = tmp_path / "slides"
    folder.mkdir()
    out = []
    for name in ("alpha", "beta", "gamma", "delta"):
        p = folder / f"{name}.tiff"
        shutil.copy(synthetic_slide, p)
        out.append(p)
    return out


def _analyze(capsys, *args) -> tuple[int, str, str]:
    code = main(["analyze", *map(str, args), "-q", "--no-cache"])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _rows(out_dir: Path) -> dict[str, dict[str, str]]:
    with open(out_dir / "cohort.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return {Path(r["path"]).stem: r for r in reader}


def _assert_outputs_valid(out_dir: Path, stem: str) -> None:
    """Every file of a finished slide parses completely."""
    meta = json.loads((out_dir / f"{stem}.json").read_text())
    assert meta["status"] == "complete"
    rows = list(csv.DictReader((out_dir / f"{stem}.csv").open()))
    assert len(rows) == meta["tiles"]["total"]
    geo = json.loads((out_dir / f"{stem}.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    png = cv2.imread(str(out_dir / f"{stem}.png"))
    assert png is not None and png.size > 0


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.headers: list[str] = []
        self.scripts_external = 0
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-status" in a:
            self.rows.append(a["data-status"])
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "a":
            self.hrefs.append(a["href"])
        if tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.scripts_external += 1
        self._in_th = tag == "th"

    def handle_data(self, data):
        if self._in_th and data.strip():
            self.headers.append(data.strip())
            self._in_th = False


def test_cohort_on_cluster_equals_in_process_and_resumes(dask_cluster, slides, toy_model, tmp_path, capsys):
    bad = slides[0].parent / "broken.tiff"
    bad.write_bytes(slides[0].read_bytes()[:3000])
    ref = tmp_path / "ref"
    code, _, err = _analyze(capsys, *slides, "--model", toy_model, "--out", ref)
    assert code == 0, err
    out = tmp_path / "out"
    code, stdout, err = _analyze(capsys, slides[0].parent, "--model", toy_model, "--out", out,
                                 "--cluster", dask_cluster.scheduler_address)
    assert code == 1, err  # the broken slide failed
    assert "Traceback" not in err
    rows = _rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {"alpha": "ok", "beta": "ok", "gamma": "ok", "delta": "ok",
                                                        "broken": "failed"}
    assert "truncated" in rows["broken"]["error"]
    for stem in ("alpha", "beta", "gamma", "delta"):
        r = rows[stem]
        assert r["tiles"] == "56" and r["provider"] == "CPU" and r["worker"].startswith("tcp://")
        assert sum(float(r[f"share_{c}"]) for c in ("malignant", "benign", "normal")) == pytest.approx(1.0, abs=1e-3)
        # The cluster writes what the in-process run writes.
        assert (out / f"{stem}.csv").read_bytes() == (ref / f"{stem}.csv").read_bytes()
        assert (out / f"{stem}.geojson").read_bytes() == (ref / f"{stem}.geojson").read_bytes()
        _assert_outputs_valid(out, stem)
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["state"] == "complete" and meta["totals"]["ok"] == 4 and meta["totals"]["failed"] == 1
    assert meta["model"]["sha256"] and meta["versions"]["distributed"] and meta["retries"] == 2

    page = _Page()
    page.feed((out / "cohort.html").read_text())
    assert sorted(page.rows) == ["failed", "ok", "ok", "ok", "ok"]
    assert {"Slide", "Status", "Tiles", "Malignant %", "In-domain %"} <= set(page.headers)
    assert page.scripts_external == 0
    assert len(page.srcs) == 4 and all((out / s).is_file() and s.startswith(THUMBS_DIR) for s in page.srcs)
    assert all(not h.startswith(("http:", "https:", "//")) and (out / h).is_file() for h in page.hrefs)

    # A rerun sends nothing for the finished slides and retries only the failed one.
    code, _, err = _analyze(capsys, slides[0].parent, "--model", toy_model, "--out", out,
                            "--cluster", dask_cluster.scheduler_address)
    assert code == 1 and "0 analysed, 4 up to date, 1 failed" in err
    assert {r["status"] for k, r in _rows(out).items() if k != "broken"} == {"skipped"}


def test_worker_killed_mid_slide_is_retried_and_equals_a_clean_run(dask_cluster, fault_dir, slides, toy_model, tmp_path,
                                                                   capsys):
    ref = tmp_path / "ref"
    assert _analyze(capsys, slides[1], "--model", toy_model, "--out", ref)[0] == 0
    (fault_dir / "beta.exit-once").touch()
    out = tmp_path / "out"
    code, _, err = _analyze(capsys, *slides, "--model", toy_model, "--out", out, "--cluster",
                            dask_cluster.scheduler_address)
    assert code == 0, err
    assert not (fault_dir / "beta.exit-once").exists()  # the hook fired: a worker died in the middle of beta
    assert {r["status"] for r in _rows(out).values()} == {"ok"}
    for ext in (".csv", ".geojson"):
        assert (out / f"beta{ext}").read_bytes() == (ref / f"beta{ext}").read_bytes()
    a, b = (json.loads((d / "beta.json").read_text()) for d in (out, ref))
    assert a["tiles"] == b["tiles"] and a["status"] == b["status"] == "complete"
    assert cv2.imread(str(out / "beta.png")).shape == cv2.imread(str(ref / "beta.png")).shape


def test_slide_that_always_kills_its_worker_fails_after_retries(dask_cluster, fault_dir, slides, toy_model, tmp_path, capsys):
    marker = fault_dir / "gamma.exit-always"
    marker.touch()
    try:
        out = tmp_path / "out"
        code, _, err = _analyze(capsys, *slides, "--model", toy_model, "--out", out, "--cluster",
                                dask_cluster.scheduler_address)
    finally:
        marker.unlink()
    assert code == 1
    rows = _rows(out)
    assert rows["gamma"]["status"] == "failed"
    assert "worker process analysing this slide died on each of 3 tries" in rows["gamma"]["error"]
    assert {k: r["status"] for k, r in rows.items() if k != "gamma"} == {"alpha": "ok", "beta": "ok", "delta": "ok"}
    assert not (out / "gamma.json").exists()
    assert "gamma.tiff" in err.split("Failures:")[1] and "Traceback" not in err
    # Three deaths in a row can make a nanny give up (Dask); the next tests want both workers back,
    # as `cellview analyze --cluster local:N` does for its own cluster (DaskSession.heal). Like heal,
    # scale again while waiting: Dask forgets a nanny that gave up only after its lost-worker timeout
    # (15 s), and a scale() before then has nothing to start (the test failed that way under load).
    deadline = time.monotonic() + SLOW
    while len(dask_cluster.scheduler_info["workers"]) < 2 and time.monotonic() < deadline:
        dask_cluster.scale(2)
        time.sleep(1.0)
    assert len(dask_cluster.scheduler_info["workers"]) == 2


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _wait_for(predicate, what: str, timeout: float = SLOW, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (code {proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _ok_rows(out: Path) -> set[str]:
    try:
        return {k for k, r in _rows(out).items() if r["status"] == "ok"}
    except (OSError, AssertionError):
        return set()


@pytest.mark.parametrize("started_as", ["foreground", "background job"])
def test_ctrl_c_keeps_finished_slides_and_a_rerun_finishes_the_rest(slides, toy_model, tmp_path, capsys, started_as):
    """The client's own local cluster, interrupted while two slides are held mid-analysis.

    The signal goes to the whole process group, as Ctrl-C in a terminal does: the workers must
    leave the shutdown to the client (no KeyboardInterrupt tracebacks from them). A "background job"
    is started with SIGINT ignored, as a non-interactive shell starts ``cmd &`` (and so this test
    suite, run that way, started the client): Python keeps an inherited SIGINT ignored, and the
    client used to run on to the end of the held slides (issue 21).
    """
    faults = tmp_path / "faults"
    faults.mkdir()
    for stem in ("gamma", "delta"):
        (faults / f"{stem}.hold").touch()
    out = tmp_path / "out"
    env = _env()
    env[FAULT_ENV] = str(faults)
    env["CELLVIEW_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellview.cli", "analyze", *map(str, slides), "--model", str(toy_model), "--out",
         str(out), "--cluster", "local:2", "-q", "--no-cache"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if started_as == "background job" else None,
    )
    try:
        _wait_for(lambda: _ok_rows(out) == {"alpha", "beta"}, "alpha and beta to finish", proc=proc)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the client and its workers
        _, err = proc.communicate(timeout=SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    rows = _rows(out)
    assert set(rows) == {"alpha", "beta"}
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["state"] == "interrupted" and meta["totals"]["pending"] == 2
    for stem in ("alpha", "beta"):
        _assert_outputs_valid(out, stem)
    assert not (out / "gamma.json").exists() and not (out / "delta.json").exists()

    code, _, err = _analyze(capsys, *slides, "--model", toy_model, "--out", out)
    assert code == 0, err
    assert "2 analysed, 2 up to date, 0 failed" in err
    assert {k: r["status"] for k, r in _rows(out).items()} == {"alpha": "skipped", "beta": "skipped",
                                                              "gamma": "ok", "delta": "ok"}


def _validate_all(out: Path) -> None:
    """Parse every final (non-temporary) file in the folder; a half-written one fails."""
    for p in list(out.glob("*")) + list(out.glob(f"{THUMBS_DIR}/*")):
        if p.name.startswith(".") or not p.is_file():
            continue
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            continue
        if p.suffix in (".json", ".geojson"):
            json.loads(data)
        elif p.suffix == ".csv":
            rows = list(csv.reader(data.decode().splitlines()))
            assert rows and all(len(r) == len(rows[0]) for r in rows), p
        elif p.suffix in (".png", ".jpg"):
            assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None, p
        elif p.suffix == ".html":
            assert data.rstrip().endswith(b"</html>"), p


def test_two_clients_on_one_folder_never_leave_a_half_written_file(dask_cluster, slides, toy_model, tmp_path,
                                                                 monkeypatch):
    """Two clients (one on the cluster, one in process) rewrite the same files while a reader checks them.

    Writes made in this process are slowed down (each file is streamed in four parts with pauses),
    as on a slow shared disk: a file written in place would be seen half-written.
    """
    import cellview.base.files as files

    original = files.atomic_write

    def slow_atomic_write(path, write):
        def slowly(fh):
            import io

            buf = io.BytesIO()
            write(buf)
            data = buf.getvalue()
            step = max(1, len(data) // 4)
            for i in range(0, len(data), step):
                fh.write(data[i:i + step])
                fh.flush()
                time.sleep(0.01)

        original(path, slowly)

    monkeypatch.setattr(files, "atomic_write", slow_atomic_write)
    out = tmp_path / "out"
    out.mkdir()
    args = ["analyze", *map(str, slides), "--model", str(toy_model), "--out", str(out), "-q", "--no-cache", "--force"]
    codes: list[int] = []
    errors: list[BaseException] = []
    clients = [threading.Thread(target=lambda extra=extra: codes.append(main([*args, *extra])))
               for extra in (["--cluster", dask_cluster.scheduler_address], [])]
    checks = 0

    def watch() -> None:
        nonlocal checks
        while any(c.is_alive() for c in clients):
            try:
                _validate_all(out)
                checks += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                return

    for c in clients:
        c.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    for c in clients:
        c.join(timeout=SLOW)
    watcher.join(timeout=SLOW)
    assert not errors, errors[0]
    assert checks > 10
    assert codes == [0, 0]
    _validate_all(out)
    assert not [p.name for p in out.rglob(".*.tmp")]
    assert {r["status"] for r in _rows(out).values()} == {"ok"}


def test_shared_slides_folder_on_the_cluster(dask_cluster, data_dir, toy_model_224, tmp_path, capsys):
    """The real slides folder: readable slides analysed, the two bad ones listed, exit 1, no traceback."""
    out = tmp_path / "out"
    code, _, err = _analyze(capsys, data_dir / "slides", "--model", toy_model_224, "--out", out,
                            "--cluster", dask_cluster.scheduler_address)
    assert code == 1
    assert "Traceback" not in err
    rows = _rows(out)
    assert rows["CMU-1-Small-Region"]["status"] == "ok"
    assert rows["CMU-1-Small-Region-pyramid"]["status"] == "ok"
    for bad in ("pyramid-header-abort", "pyramid-header-huge-height"):
        assert rows[bad]["status"] == "failed" and "damaged header" in rows[bad]["error"]


def test_single_slide_runs_write_no_cohort_table(synthetic_slide, toy_model, tmp_path, capsys):
    code, _, err = _analyze(capsys, synthetic_slide, "--model", toy_model, "--out", tmp_path)
    assert code == 0, err
    assert not (tmp_path / "cohort.csv").exists()


def test_bad_cluster_arguments_are_clear(synthetic_slide, toy_model, tmp_path, capsys):
    code, _, err = _analyze(capsys, synthetic_slide, "--model", toy_model, "--out", tmp_path, "--cluster", "local:x")
    assert code == 2 and "positive number" in err
    code, _, err = _analyze(capsys, synthetic_slide, "--model", toy_model, "--out", tmp_path, "--retries", "-1")
    assert code == 2 and "--retries" in err


def test_a_local_cluster_that_lost_a_worker_is_scaled_back():
    """DaskSession.heal: a nanny that gave up after repeated deaths is replaced (at most every 5 s)."""
    from cellview.scale.cohort import DaskSession

    class Cluster:
        def __init__(self) -> None:
            self.workers = {0: object()}
            self.scaled: list[int] = []

        def scale(self, n: int) -> None:
            self.scaled.append(n)

    session = DaskSession.__new__(DaskSession)
    session.cluster, session.n_local, session._last_heal = Cluster(), 2, 0.0
    session.heal()
    assert session.cluster.scaled == [2]
    session.heal()  # within 5 s: not again
    assert session.cluster.scaled == [2]
    session._last_heal = 0.0
    session.cluster.workers[1] = object()
    session.heal()  # whole: nothing to do
    assert session.cluster.scaled == [2]


def test_sigterm_and_an_ignored_sigint_both_stop_a_cohort_run():
    from cellview.scale.cohort import stop_on_signals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as inherited by a background job
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with pytest.raises(KeyboardInterrupt), stop_on_signals() as stopped_by:
                os.kill(os.getpid(), sig)
                time.sleep(5)  # interrupted at once
            assert stopped_by == [sig]
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the handlers are given back
    finally:
        signal.signal(signal.SIGINT, previous)


def test_cohort_csv_cells_cannot_become_formulas_and_json_keeps_the_names(synthetic_slide, toy_model, tmp_path,
                                                                          capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    evil = '=HYPERLINK("evil.example",@A1)'
    for stem in (evil, "plain"):
        shutil.copy(synthetic_slide, folder / f"{stem}.tiff")
    out = tmp_path / "out"
    code, _, err = _analyze(capsys, str(folder), "--model", toy_model, "--out", out, "--formats", "csv,json")
    assert code == 0, err
    with open(out / "cohort.csv", newline="") as fh:
        names = sorted(r["name"] for r in csv.DictReader(fh))
    assert names == ["'" + evil + ".tiff", "plain.tiff"]
    assert json.loads((out / f"{evil}.json").read_text())["slide"]["name"] == evil  # the JSON keeps it exact


def test_local_cluster_and_its_dashboard_listen_on_this_machine_only():
    psutil = pytest.importorskip("psutil")
    from cellview.scale.cohort import DaskSession

    me = psutil.Process()

    def listening() -> set:
        return {c.laddr for c in me.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}

    others = listening()  # e.g. the session's own test cluster (conftest.dask_cluster)
    session = DaskSession("local:1", None, 0)
    try:
        ours = listening() - others  # the scheduler (and dashboard) live in this process
        assert ours and all(addr.ip in ("127.0.0.1", "::1") for addr in ours), ours
        if session.dashboard:
            assert "127.0.0.1" in session.dashboard
    finally:
        session.close()
