"""`cellview serve`'s API, in process (Starlette's TestClient): uploads, jobs, the view's data, security, load.

The page itself is tested in a real browser in test_serve_browser.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from cellview.analysis.results import AnalysisParams  # noqa: E402
from cellview.serve.app import ServeConfig, create_app  # noqa: E402
from cellview.serve.jobs import RunSettings  # noqa: E402
from cellview.serve.uploads import UploadError, receive_upload, safe_name, sniff_suffix  # noqa: E402

LOCAL = "http://127.0.0.1:8765"
REPO = Path(__file__).resolve().parent.parent


def config(tmp_path: Path, models: dict[str, Path], **changes) -> ServeConfig:
    default = next(iter(models))
    base = ServeConfig(models=models, default_model=default, root=tmp_path / "serve-root",
                       params=replace(AnalysisParams(), batch_size=8))
    return replace(base, **changes)


@pytest.fixture
def client(tmp_path, toy_model):
    app = create_app(config(tmp_path, {"toy": toy_model}))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def domain_model(tmp_path_factory) -> Path:
    """The colour toy model with domain statistics of plain red, blue and green tiles."""
    from cellview.testing.synthetic import make_toy_domain, make_toy_model

    path = make_toy_model(tmp_path_factory.mktemp("toydom"), patch_px=64, spacing_um=1.0, name="toy-domain",
                          features=True)
    make_toy_domain(path, patch_px=64)
    return path


def upload(c: TestClient, path: Path, name: str | None = None, url: str = "/api/analyze", **fields):
    return c.post(url, files={"file": (name or path.name, path.read_bytes(), "application/octet-stream")},
                  data={k: str(v) for k, v in fields.items()})


def wait_done(c: TestClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.get(f"/api/jobs/{job_id}").json()
        if body["state"] in ("done", "cancelled", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


# ----------------------------------------------------------------------------- the page and its assets


def test_the_page_has_a_file_input_and_loads_nothing_from_elsewhere(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert re.search(r'<input type="file"[^>]*name="file"', r.text)
    sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert sources and all(s.startswith("/static/") or s == "data:," for s in sources), sources
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "default-src 'self'" in csp
    for asset in ("/static/app.js", "/static/style.css", "/static/vendor/openseadragon/openseadragon.min.js"):
        a = client.get(asset)
        assert a.status_code == 200 and len(a.content) > 1000, asset
    js = client.get("/static/app.js").text
    assert "innerHTML" not in js and "http://" not in js and "https://" not in js


# ----------------------------------------------------------------------------- analyse


def test_analyze_returns_the_call_the_shares_and_the_files_cellview_analyze_writes(client, synthetic_slide,
                                                                                    toy_model, tmp_path):
    from cellview.cli import main
    from cellview.testing.synthetic import expected_synthetic_tiles

    r = upload(client, synthetic_slide, "synthetic.tiff")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = expected_synthetic_tiles()
    per_cat = {c: sum(v == c for v in expected.values()) for c in ("malignant", "benign", "normal")}
    assert {c: s["tiles"] for c, s in body["shares"].items()} == per_cat
    assert abs(sum(s["share"] for s in body["shares"].values()) - 1) < 1e-9
    # the engine's one rule, worst finding first: a malignant minority (16 of 56 tiles) makes the call malignant
    assert body["call"]["category"] == "malignant" and body["call"]["words"].startswith("Malignant: ")
    assert body["call"]["words"] == body["call"]["text"] and body["call"]["color"] == "#d62728"
    assert body["model"] == "toy" and body["provider"] == "CPU" and body["state"] == "done"
    assert set(body["outputs"]) == {"csv", "geojson", "png", "json"}

    # the files are those `cellview analyze` writes for the same slide and model
    out = tmp_path / "cli-out"
    assert main(["analyze", str(synthetic_slide), "--model", str(toy_model), "--out", str(out), "-q",
                 "--batch-size", "8"]) == 0
    files = {k: client.get(v["url"]) for k, v in body["outputs"].items()}
    assert all(f.status_code == 200 for f in files.values())
    assert files["csv"].content == (out / "synthetic.csv").read_bytes()
    assert json.loads(files["geojson"].content) == json.loads((out / "synthetic.geojson").read_text())
    served, cli = json.loads(files["json"].content), json.loads((out / "synthetic.json").read_text())
    assert served["tiles"] == cli["tiles"] and served["model"] == cli["model"] and served["grid"] == cli["grid"]
    assert served["call"] == cli["call"] and {k: body["call"][k] for k in served["call"]} == served["call"]
    assert served["slide"]["name"] == cli["slide"]["name"] == "synthetic"
    assert str(client.app.server.store.root) not in files["json"].text
    assert served["slide"]["path"] == "synthetic.tiff"  # the server's folders stay on the server
    assert files["png"].content[:8] == b"\x89PNG\r\n\x1a\n"
    assert files["csv"].headers["content-disposition"] == 'attachment; filename="synthetic.csv"'


def test_the_job_api_streams_progress_and_the_view_data(client, synthetic_slide):
    from cellview.analysis.tiling import read_tile
    from cellview.outputs.overlay import OverlaySettings, fill_rgba
    from cellview.slides.opening import open_slide

    r = upload(client, synthetic_slide, url="/api/jobs")
    assert r.status_code == 202
    job = r.json()
    assert job["state"] in ("queued", "running", "exporting", "done") and len(job["id"]) >= 22
    with client.stream("GET", job["urls"]["events"]) as events:
        statuses = [json.loads(line[6:]) for line in events.iter_lines() if line.startswith("data: {")
                    and '"id"' in line]
    assert statuses[-1]["state"] == "done" and statuses[-1]["progress"]["done"] == statuses[-1]["progress"]["total"]
    assert [s["version"] for s in statuses] == sorted(s["version"] for s in statuses)

    ov = client.get(job["urls"]["overlay"], params={"style": "fill"}).json()
    result = client.app.server.store.get(job["id"]).result
    g = result.grid
    assert ov["grid"]["stride_l0"] == [g.stride_l0_x, g.stride_l0_y] and ov["grid"]["slide_l0"] == [2048, 1536]
    fill = decode_data_url(ov["fill"])
    expected = g.to_display(fill_rgba(result, OverlaySettings(style="fill")))
    assert np.array_equal(fill, expected)
    assert ov["hatch"] is None and ov["legend"]["rows"][0]["key"] == "malignant"
    outline = client.get(job["urls"]["overlay"]).json()
    assert outline["style"] == "outline" and {c["category"] for c in outline["contours"]} == {
        "malignant", "benign", "normal"}

    tile = client.get(job["urls"]["tile"], params={"x": 2 * 128 + 5, "y": 2 * 128 + 5}).json()
    assert tile["category"] == "malignant" and tile["done"] and len(tile["lines"]) == 6
    patch = client.get(tile["patch_url"])
    assert patch.headers["content-type"] == "image/png"
    with open_slide(synthetic_slide) as slide:
        assert np.array_equal(decode_png(patch.content)[..., :3], read_tile(slide, g, tile["index"]))
    assert client.get(job["urls"]["tile"], params={"x": 5, "y": 5}).status_code == 404  # glass: no tile
    assert client.get(job["urls"]["tile"], params={"x": "a", "y": 1}).status_code == 400

    dzi = client.get(job["urls"]["dzi"])
    assert '<Size Width="2048" Height="1536"' in dzi.text
    top = client.get(f"/api/jobs/{job['id']}/slide_files/11/0_0.jpeg")
    assert top.headers["content-type"] == "image/jpeg" and decode_png(top.content).shape[:2] == (255, 255)
    assert client.get(f"/api/jobs/{job['id']}/slide_files/99/0_0.jpeg").status_code == 404


def decode_data_url(url: str) -> np.ndarray:
    import base64

    return decode_png(base64.b64decode(url.split(",", 1)[1]))


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def test_out_of_domain_tiles_are_hatched_and_left_out_as_on_the_desktop(tmp_path, domain_model, odd_slide):
    app = create_app(config(tmp_path, {"dom": domain_model}))
    with TestClient(app, base_url=LOCAL) as c:
        body = upload(c, odd_slide).json()
        assert body["state"] == "done"
        result = app.server.store.get(body["id"]).result
        assert result.out_of_domain.any() and result.in_domain.any()
        ov = c.get(body["urls"]["overlay"]).json()
        hatch = decode_data_url(ov["hatch"])[..., 3] > 0
        assert np.array_equal(hatch, result.grid.to_display(result.out_of_domain_grid()))
        ood_row = next(r for r in ov["legend"]["rows"] if r["key"] == "out_of_domain")
        assert ood_row["count"] == int(result.out_of_domain.sum()) and ood_row["swatch"] == "hatch"
        assert sum(s["tiles"] for s in body["shares"].values()) == int(result.in_domain.sum())
        anyway = c.get(body["urls"]["overlay"], params={"anyway": 1}).json()
        assert anyway["hatch"] is None and anyway["show_anyway"]


# ----------------------------------------------------------------------------- bad input


def test_junk_and_damaged_uploads_get_the_clis_message_and_the_server_lives_on(client, synthetic_slide, tmp_path):
    from cellview.base.errors import SlideError
    from cellview.slides.opening import open_slide

    def cli_message(name: str, data: bytes) -> str:
        path = tmp_path / "cli" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        with pytest.raises(SlideError) as err:
            open_slide(path)
        return err.value.message

    junk = b"this is not a slide at all\n" * 50
    r = client.post("/api/analyze", files={"file": ("notes.svs", junk)})
    assert r.status_code == 415 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == cli_message("notes.svs", junk)
    truncated = synthetic_slide.read_bytes()[:5000]
    r = client.post("/api/analyze", files={"file": ("cut.tiff", truncated)})
    assert r.status_code == 422 and r.json()["error"] == cli_message("cut.tiff", truncated)
    r = client.post("/api/analyze", files={"file": ("empty.png", b"")})
    assert r.status_code == 422 and r.json()["error"] == "empty.png is empty (0 bytes)."
    assert client.post("/api/analyze", data={"mpp": "1"}).status_code == 400  # no file
    assert client.post("/api/analyze", content=b"x", headers={"content-type": "text/plain"}).status_code == 400
    r = upload(client, synthetic_slide, model="../../etc/passwd")
    assert r.status_code == 400 and "available: toy" in r.json()["error"]
    assert upload(client, synthetic_slide, mpp="abc").status_code == 400
    assert upload(client, synthetic_slide).status_code == 200  # still serving
    assert sorted(p.name for p in client.app.server.store.root.iterdir()) == [
        j.id for j in sorted(client.app.server.store.all(), key=lambda j: j.id)]  # refused uploads left nothing


def test_a_plain_image_without_a_pixel_size_is_told_how_to_give_one(client, tmp_path):
    import cv2

    from cellview.testing.synthetic import synthetic_slide_rgb

    png = tmp_path / "cells.png"
    cv2.imwrite(str(png), synthetic_slide_rgb()[:512, :512])
    r = upload(client, png)
    assert r.status_code == 422 and "µm/px" in r.json()["error"] and "cells.png" in r.json()["error"]
    ok = upload(client, png, mpp="0.5")
    assert ok.status_code == 200 and ok.json()["state"] == "done"
    job = ok.json()["id"]
    assert '<Size Width="512" Height="512"' in client.get(f"/api/jobs/{job}/slide.dzi").text
    for level, side in ((0, 1), (5, 32), (8, 255), (9, 255)):  # the image's in-memory reductions, and itself
        tile = client.get(f"/api/jobs/{job}/slide_files/{level}/0_0.jpeg")
        assert tile.status_code == 200 and decode_png(tile.content).shape[:2] == (side, side), level
    top = decode_png(client.get(f"/api/jobs/{job}/slide_files/9/0_0.jpeg").content).astype(int)
    original = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)[:255, :255].astype(int)
    assert np.abs(top - original).mean() < 4  # the pixels themselves (JPEG)
    whole = upload(client, png, whole_image="1")
    assert whole.status_code == 200 and whole.json()["progress"]["total"] == 1


def test_oversize_uploads_are_refused_while_streaming_and_leave_nothing(tmp_path, toy_model):
    app = create_app(config(tmp_path, {"toy": toy_model}, max_upload_bytes=64 << 10))
    with TestClient(app, base_url=LOCAL) as c:
        r = c.post("/api/analyze", files={"file": ("big.tiff", b"II*\x00" + os.urandom(200 << 10))})
        assert r.status_code == 413 and "larger than this server accepts (64 KB)" in r.json()["error"]
        assert list(app.server.store.root.iterdir()) == []

    async def body():  # no Content-Length: the limit holds while the bytes stream in
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.tiff\"\r\n\r\n"
        for _ in range(100):
            yield b"\0" * 4096

    dest = tmp_path / "stream"
    with pytest.raises(UploadError) as err:
        asyncio.run(receive_upload("multipart/form-data; boundary=b", None, body(), dest, 64 << 10))
    assert err.value.status == 413 and list(dest.iterdir()) == []


def test_uploaded_names_are_only_shown_never_used(client, synthetic_slide):
    nasty = '../../<img src=x onerror=alert(1)>"; rm -rf ~.tiff'
    body = upload(client, synthetic_slide, nasty).json()
    job = client.app.server.store.get(body["id"])
    assert not set(body["name"]) & set("<>\"'/\\;&~") and body["name"].endswith(".tiff")
    assert job.slide_path == job.folder / "slide.tiff" and job.folder.parent == client.app.server.store.root
    disposition = client.get(body["outputs"]["csv"]["url"]).headers["content-disposition"]
    assert disposition.startswith("attachment; filename") and not set(disposition) & set("<>/\\")
    assert safe_name("C:\\scans\\a b.svs") == "a b.svs" and safe_name("..") == "upload"
    assert safe_name("x\u202e\u0000y.svs") == "xy.svs"  # control and bidi characters go


def test_the_type_is_read_from_the_bytes():
    assert sniff_suffix(b"II*\x00" + b"\0" * 20, 100) == ".tiff"
    assert sniff_suffix(b"\x89PNG\r\n\x1a\n", 100) == ".png"
    assert sniff_suffix(b"\xff\xd8\xff\xe0", 100) == ".jpg"
    assert sniff_suffix(b"\0" * 128 + b"DICM", 200) == ".dcm"
    assert sniff_suffix(b"<svg xmlns=", 100) is None and sniff_suffix(b"PK\x03\x04", 100) is None
    assert sniff_suffix(b"BM" + (100).to_bytes(4, "little") + b"\0" * 8 + (40).to_bytes(4, "little"), 100) == ".bmp"
    assert sniff_suffix(b"BM hello, not a bitmap at all", 29) is None


# ----------------------------------------------------------------------------- who may connect


def test_beyond_localhost_every_request_needs_the_token(tmp_path, toy_model, synthetic_slide):
    from cellview.serve.server import token_for

    with pytest.raises(ValueError):
        create_app(config(tmp_path, {"toy": toy_model}, host="0.0.0.0"))
    token, generated = token_for("0.0.0.0", None)
    assert generated and len(token) >= 32 and token_for("127.0.0.1", None) == (None, False)
    app = create_app(config(tmp_path, {"toy": toy_model}, host="0.0.0.0", token="s3cret-token"))
    with TestClient(app, base_url="http://lab-server:8765") as c:
        for path in ("/", "/api/info", "/api/jobs", "/static/app.js"):
            r = c.get(path)
            assert r.status_code == 401 and "access token" in r.json()["error"], path
        assert c.get("/api/info", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert upload(c, synthetic_slide).status_code == 401  # refused before the upload is read
        assert list(app.server.store.root.iterdir()) == []
        assert c.get("/api/info", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/api/info", headers={"x-cellview-token": "s3cret-token"}).status_code == 200
        link = c.get("/?token=s3cret-token", follow_redirects=False)
        assert link.status_code == 303 and link.headers["location"] == "/"
        assert "HttpOnly" in link.headers["set-cookie"] and "SameSite=Strict" in link.headers["set-cookie"]
        assert c.get("/").status_code == 200  # the cookie carries it from now on
        assert upload(c, synthetic_slide).status_code == 200


def test_on_localhost_other_hosts_and_other_sites_are_refused(client):
    assert client.get("/api/info", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding
    assert client.get("/api/info", headers={"host": "localhost:8765"}).status_code == 200
    r = client.post("/api/jobs", files={"file": ("a.tiff", b"II*\x00")}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert client.get("/api/info").headers["x-frame-options"] == "DENY"
    assert client.get("/api/info").headers["cache-control"] == "no-store"


def test_a_session_sees_its_own_jobs_and_a_shared_link_shows_one(tmp_path, toy_model, synthetic_slide):
    app = create_app(config(tmp_path, {"toy": toy_model}))
    with TestClient(app, base_url=LOCAL) as alice, TestClient(app, base_url=LOCAL) as bob:
        mine = upload(alice, synthetic_slide).json()
        assert [j["id"] for j in alice.get("/api/jobs").json()["jobs"]] == [mine["id"]]
        assert bob.get("/api/jobs").json()["jobs"] == []
        assert bob.get(f"/api/jobs/{mine['id']}").json()["name"] == synthetic_slide.name  # the shared link
        assert bob.get(f"/api/jobs/{mine['id'][:-1]}x").status_code == 404
        ids = {upload(bob, synthetic_slide).json()["id"] for _ in range(3)}
        assert len(ids) == 3 and all(len(i) >= 22 for i in ids)


# ----------------------------------------------------------------------------- the worker, the cache, the files


def test_cache_cancel_remove_and_cleanup(tmp_path, toy_model, synthetic_slide, monkeypatch):
    from cellview.analysis.pipeline import CancelToken
    from cellview.serve.jobs import InferenceWorker

    monkeypatch.setenv("CELLVIEW_CACHE_DIR", str(tmp_path / "cache"))  # a cache no other test filled

    app = create_app(config(tmp_path, {"toy": toy_model}))
    with TestClient(app, base_url=LOCAL) as c:
        store = app.server.store
        first = upload(c, synthetic_slide).json()
        again = upload(c, synthetic_slide, "copy.tiff").json()
        assert not first["progress"]["from_cache"] and again["progress"]["from_cache"]  # by content and model
        job = store.get(first["id"])
        assert sorted(p.name for p in job.folder.iterdir()) == ["out", "slide.tiff"]  # no upload.part left

        class StopAfter(CancelToken):  # cancels at the pipeline's third check, as the page's Cancel does
            def __init__(self) -> None:
                super().__init__()
                self.checks = 0

            @property
            def cancelled(self) -> bool:
                self.checks += 1
                return self.checks > 2

        worker = InferenceWorker(store, {"toy": toy_model}, RunSettings(use_cache=False))
        try:
            r = upload(c, synthetic_slide, "slow.tiff", url="/api/jobs").json()
            wait_done(c, r["id"])
            job = store.get(r["id"])
            job.cancel, job.state, job.result = StopAfter(), "queued", None
            worker.run(job)
            wait_done(c, job.id)
            assert job.state == "cancelled" and 0 < job.result.n_done < job.result.n_tiles
            assert job.outputs["csv"].exists()  # the finished tiles are kept and exported
            queued = upload(c, synthetic_slide, "never.tiff", url="/api/jobs").json()
            wait_done(c, queued["id"])
            job = store.get(queued["id"])
            job.cancel.cancel()
            job.state = "queued"
            worker.run(job)
            assert job.state == "cancelled" and not job.folder.exists()
        finally:
            worker.close()
        assert c.post(f"/api/jobs/{first['id']}/cancel").json()["state"] == "done"  # too late: nothing changes
        folder = store.get(first["id"]).folder
        assert c.delete(f"/api/jobs/{first['id']}").status_code == 200 and not folder.exists()
        assert c.get(f"/api/jobs/{first['id']}").status_code == 404
        store.get(again["id"]).ended_unix -= 2 * store.keep_s
        assert store.expire() == 1 and store.get(again["id"]) is None
        root = store.root
    assert not root.exists()  # the server's folder goes with it


def test_a_job_that_fails_in_the_worker_removes_its_upload(tmp_path, toy_model, synthetic_slide, monkeypatch):
    from cellview.base.errors import SlideError

    def broken(*args, **kwargs):
        raise SlideError("slide.tiff looks like a slide but is damaged or truncated.", "test")
        yield  # a generator, as the pipeline's analyze is

    monkeypatch.setattr("cellview.analysis.pipeline.analyze", broken)
    app = create_app(config(tmp_path, {"toy": toy_model}))
    with TestClient(app, base_url=LOCAL) as c:
        r = upload(c, synthetic_slide, "mine.tiff")
        assert r.status_code == 422
        assert r.json()["error"] == "mine.tiff looks like a slide but is damaged or truncated."
        assert not app.server.store.get(r.json()["job"]["id"]).folder.exists()


# ----------------------------------------------------------------------------- many users


def test_twenty_concurrent_uploads_are_all_held_and_answered(tmp_path, toy_model):
    import httpx

    from cellview.serve.server import BackgroundServer
    from cellview.testing.synthetic import synthetic_slide_rgb, write_pyramid_tiff

    small = write_pyramid_tiff(tmp_path / "small.tiff", synthetic_slide_rgb()[:768, :1024], 0.5, levels=2)
    data = small.read_bytes()  # the same slide 20 times: one analysis, 19 from the cache, 20 exports
    answers: list[dict] = []
    lock = threading.Lock()
    with BackgroundServer(config(tmp_path, {"toy": toy_model}, port=0)) as url:
        def one(k: int) -> None:
            r = httpx.post(f"{url}/api/analyze", files={"file": (f"slide-{k}.tiff", data)}, timeout=300)
            with lock:
                answers.append({**r.json(), "http": r.status_code})

        threads = [threading.Thread(target=one, args=(k,)) for k in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(answers) == 20 and all(a["http"] == 200 and a["call"]["category"] for a in answers)
    assert sorted(a["name"] for a in answers) == sorted(f"slide-{k}.tiff" for k in range(20))
    assert len({a["id"] for a in answers}) == 20


# ----------------------------------------------------------------------------- the command


def test_cellview_serve_listens_on_localhost_only_and_cleans_up(tmp_path, toy_model, synthetic_slide):
    import httpx

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "cellview.cli", "serve", "--port", "0", "--model", str(toy_model)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        found = None
        while found is None and len(lines) < 20:
            lines.append(proc.stderr.readline())
            found = re.search(r"serving on (http://127\.0\.0\.1:(\d+)/) \(this machine only\)", lines[-1])
        assert found, lines
        url, port = found.group(1), int(found.group(2))
        assert '<input type="file"' in httpx.get(url, timeout=30).text
        listening = [row.split()[1] for row in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if row.split()[3] == "0A"] if Path("/proc/net/tcp").exists() else []
        if listening:
            assert f"0100007F:{port:04X}" in listening  # 127.0.0.1 only
            assert f"00000000:{port:04X}" not in listening
        r = httpx.post(url + "api/analyze", files={"file": ("s.tiff", synthetic_slide.read_bytes())}, timeout=120)
        assert r.status_code == 200 and r.json()["call"]["category"]
        junk = httpx.post(url + "api/analyze", files={"file": ("j.svs", b"junk" * 100)}, timeout=30)
        assert 400 <= junk.status_code < 500 and junk.json()["error"]
        run_dirs = list((Path(os.environ["CELLVIEW_CACHE_DIR"]) / "serve").glob(f"run-{proc.pid}-*"))
        assert len(run_dirs) == 1 and any(run_dirs[0].iterdir())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not run_dirs[0].exists()


def test_the_real_slide_through_the_api(real_slide, tmp_path):
    from cellview.analysis.model_lookup import resolve_model

    app = create_app(config(tmp_path, {"colon-he": resolve_model(None)}))
    with TestClient(app, base_url=LOCAL) as c:
        r = upload(c, real_slide)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["call"]["category"] == "out_of_domain"  # skin under the colon model: no trustworthy call
        assert body["call"]["headline"] == "No call: out of domain"
        assert body["model"] == "colon-he" and body["progress"]["total"] > 0
        ov = c.get(body["urls"]["overlay"]).json()
        assert ov["domain"]["banner"] and ov["hatch"] is not None  # skin, not colon: the desktop's banner too


@pytest.mark.slow
def test_jobs_run_on_a_dask_cluster(tmp_path, toy_model, synthetic_slide, dask_cluster):
    cfg = config(tmp_path, {"toy": toy_model}, cluster=dask_cluster.scheduler_address)
    app = create_app(cfg)
    with TestClient(app, base_url=LOCAL) as c:
        assert "Dask scheduler" in c.get("/api/info").json()["runner"]
        r = upload(c, synthetic_slide)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["call"]["category"] == "malignant" and set(body["outputs"]) == {"csv", "geojson", "png", "json"}
        assert c.get(body["urls"]["tile"], params={"x": 300, "y": 300}).json()["category"] == "malignant"


def test_a_smear_model_reads_an_image_without_a_pixel_size_by_its_rule(tmp_path, toy_model):
    """The page, like `cellview analyze` and the viewer, lets a model that declares how it reads an image without a
    pixel size (blood-all: a smear field of known width) read it, and says what it assumed; an H&E model still asks."""
    import cv2

    from cellview.testing.synthetic import make_toy_model, synthetic_smear

    reading = {"foreground": {"rule": "stained-cells", "fallback": "whole-field"},
               "unstated_pixel_size": {"read": "field", "field_um": 100, "note": "its images are 100 µm fields"}}
    smear_model = make_toy_model(tmp_path / "smear-model", patch_px=64, spacing_um=0.225, name="toy-smear",
                                 sidecar_overrides=reading)
    rgb, _ = synthetic_smear(320, seed=4, white_cells=3, red_cell_px=22.0)
    png = tmp_path / "smear.png"
    cv2.imwrite(str(png), rgb[..., ::-1])
    app = create_app(config(tmp_path, {"toy-smear": smear_model, "toy": toy_model}))
    with TestClient(app, base_url=LOCAL) as c:
        r = upload(c, png, model="toy-smear")
        assert r.status_code == 200 and r.json()["state"] == "done", r.text
        assert r.json()["call"]["category"] in {"malignant", "benign", "normal"}
        meta = c.get(r.json()["outputs"]["json"]["url"]).json()
        assert "100 µm" in meta["reading"]["pixel_size"] and r.json()["call"]["reading"] == meta["reading"]["pixel_size"]
        asked = upload(c, png, model="toy")
        assert asked.status_code == 422 and "µm/px" in asked.json()["error"]
