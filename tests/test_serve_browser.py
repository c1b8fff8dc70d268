"""`cellview serve`'s page in a real headless browser: Debian's Chromium driven by Playwright's Python client.

Never ``playwright install``: the browser is the system's (``apt-get install chromium``; .ci/run installs it).
The page runs under its strict Content-Security-Policy, so the tests read the page's state with
``page.evaluate`` (no string evaluation inside the page) and fail on any error the page logs.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python client is not installed")

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).exists()), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium "
                                "(apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def serve(tmp_path: Path, models: dict[str, Path], token: str | None = None):
    from cellview.analysis.results import AnalysisParams
    from cellview.serve.app import ServeConfig
    from cellview.serve.server import BackgroundServer

    config = ServeConfig(models=models, default_model=next(iter(models)), root=tmp_path / "root", port=0,
                         params=replace(AnalysisParams(), batch_size=8), token=token)
    return BackgroundServer(config)


def wait_until(page, js: str, timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(js)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {js}")


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    # a request the page itself ends (the event stream closed at the job's end) is not a failure
    page.on("requestfailed", lambda r: None if "ERR_ABORTED" in (r.failure or "") else problems.append(
        f"failed: {r.url} ({r.failure})"))
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    return page, problems


OVERLAY_PIXELS = """() => {
  const c = document.getElementById('overlay');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""


def analyse_in_page(page, slide: Path) -> dict:
    page.set_input_files("#file", str(slide))
    page.click("#analyse")
    wait_until(page, "() => ['done', 'cancelled', 'failed'].includes(document.body.dataset.jobState)")
    assert page.evaluate("() => document.body.dataset.jobState") == "done", page.inner_text("#run")
    # the readouts follow the job's state from their own fetch: under load "So far: …" stayed a moment longer
    wait_until(page, "() => { const w = document.getElementById('call-words').innerText;"
                     " return w.length > 0 && !w.startsWith('So far'); }")
    return wait_until(page, "() => { const s = window.cellview.state(); return s.overlay && s.draws ? s : null; }")


def click_tile_and_download_csv(page, l0_xy: tuple[float, float]) -> tuple[str, str]:
    """Click the slide at a level-0 point (placed by the viewer's own transform), then download the CSV."""
    x, y = page.evaluate("""([x, y]) => { const v = document.getElementById('viewer').getBoundingClientRect();
        const p = window.cellview.toViewer(x, y); return [v.left + p[0], v.top + p[1]]; }""", list(l0_xy))
    page.mouse.click(x, y)
    wait_until(page, "() => Number.isInteger(window.cellview.state().selected)")
    wait_until(page, "() => { const i = document.getElementById('patch'); return i.complete && i.naturalWidth > 0; }")
    with page.expect_download() as info:
        page.click("a[data-kind=csv]")
    download = info.value
    return download.suggested_filename, Path(download.path()).read_text(encoding="utf-8")


def test_the_page_on_a_synthetic_slide(browser, tmp_path, toy_model, synthetic_slide):
    with serve(tmp_path, {"toy": toy_model}) as url:
        page, problems = open_page(browser, url + "/")
        assert page.locator("input[type=file]").count() == 1
        state = analyse_in_page(page, synthetic_slide)
        assert not state["hatched"]  # the toy model scores no domain
        assert page.evaluate(OVERLAY_PIXELS) > 1000  # the category outlines are drawn over the slide
        assert page.get_attribute("#call-words", "data-category") == "malignant"  # worst finding first
        words = page.inner_text("#call-words")
        assert words.startswith("Malignant\n") and "29 % of tiles" in words
        legend = page.inner_text("#legend")
        assert "malignant" in legend and "Slide: synthetic" in legend
        name, csv = click_tile_and_download_csv(page, (2 * 128 + 64, 2 * 128 + 64))  # the red block
        assert "malignant" in page.inner_text("#inspector")
        assert name == "synthetic.csv" and csv.count("\n") == 57 and "pred_category" in csv.splitlines()[0]
        page.select_option("#style", "fill")
        wait_until(page, "() => document.getElementById('legend-footer').innerText.includes('intensity = confidence')")
        assert page.evaluate(OVERLAY_PIXELS) > 10000  # filled cells now
        assert problems == []
        page.close()


def test_the_overlay_streams_in_and_cancel_keeps_the_finished_tiles(browser, tmp_path, toy_model, synthetic_slide,
                                                                    monkeypatch):
    import threading

    from cellview.analysis.classifier import OnnxClassifier

    classify = OnnxClassifier.classify
    gate, calls = threading.Event(), []

    def held(self, *args, **kwargs):  # the model waits after two batches until the test has looked
        calls.append(1)
        if len(calls) > 2:
            gate.wait(60)
        return classify(self, *args, **kwargs)

    monkeypatch.setattr(OnnxClassifier, "classify", held)
    monkeypatch.setenv("CELLVIEW_CACHE_DIR", str(tmp_path / "cache"))
    server = serve(tmp_path, {"toy": toy_model})
    with server as url:
        page, problems = open_page(browser, url + "/")
        page.set_input_files("#file", str(synthetic_slide))
        page.click("#analyse")
        partial = wait_until(page, """() => { const s = window.cellview.state();
          const t = document.getElementById('legend-counted').textContent;
          return s.state === 'running' && s.draws > 0 && /^[1-9]\\d* tiles? classified/.test(t) ? t : null; }""", 60)
        assert int(partial.split()[0]) < 56  # part of the slide, drawn while the rest is classified
        assert page.inner_text("#call-words").startswith("So far: ")
        page.click("#cancel")
        deadline = time.monotonic() + 30
        while not all(j.cancel.cancelled for j in server.app.server.store.all()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the page's Cancel has reached the server
        gate.set()
        wait_until(page, "() => document.body.dataset.jobState === 'cancelled'", 60)
        done = int(page.inner_text("#legend-counted").split()[0])
        assert 0 < done < 56 and "cancelled: the finished tiles are kept" in page.inner_text("#run-text")
        assert page.is_visible("a[data-kind=csv]")
        assert problems == []
        page.close()


def test_the_token_link_opens_the_page_and_nothing_works_without_it(browser, tmp_path, toy_model, synthetic_slide):
    with serve(tmp_path, {"toy": toy_model}, token="lab-token-123") as url:
        bare = browser.new_page()
        assert bare.goto(url + "/").status == 401 and "access token" in bare.inner_text("body")
        bare.close()
        page, problems = open_page(browser, url + "/?token=lab-token-123")
        assert page.url == url + "/"  # the token left the address bar for an HttpOnly cookie
        analyse_in_page(page, synthetic_slide)  # uploads, the event stream and the tiles carry the cookie
        assert "lab-token-123" not in page.evaluate("() => document.cookie")  # scripts in the page cannot read it
        assert problems == []
        page.close()


def test_a_junk_upload_shows_the_message_and_the_page_goes_on(browser, tmp_path, toy_model):
    junk = tmp_path / "notes.svs"
    junk.write_bytes(b"not a slide\n" * 100)
    with serve(tmp_path, {"toy": toy_model}) as url:
        page, _ = open_page(browser, url + "/")
        page.set_input_files("#file", str(junk))
        page.click("#analyse")
        wait_until(page, "() => document.getElementById('upload-error').textContent.length > 0", 30)
        assert page.inner_text("#upload-error").startswith("notes.svs is not a slide format CellView can read.")
        page.close()


def test_the_page_on_the_real_slide(browser, tmp_path, real_slide):
    from cellview.analysis.model_lookup import resolve_model

    with serve(tmp_path, {"colon-he": resolve_model(None)}) as url:
        page, problems = open_page(browser, url + "/")
        state = analyse_in_page(page, real_slide)
        assert state["hatched"]  # skin, not colon: hatched grey as on the desktop, with its banner
        assert page.is_visible("#banner") and "calls are unreliable" in page.inner_text("#banner")
        assert page.inner_text("#call-words").startswith("No call: out of domain")
        assert page.evaluate(OVERLAY_PIXELS) > 10000
        name, csv = click_tile_and_download_csv(page, (1100, 1500))
        assert name == "CMU-1-Small-Region.csv" and "prob_adenocarcinoma" in csv.splitlines()[0]
        assert len(csv.splitlines()) > 10
        assert "OUT of domain" in page.inner_text("#tile-lines")
        assert problems == []
        page.close()
