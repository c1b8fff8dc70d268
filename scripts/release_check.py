#!/usr/bin/env python3
"""Release check: the wheel a user would install carries its models and its viewer, and works.

Run by .ci/run after the tests (python scripts/release_check.py). It builds the wheel from the
committed files (isolated build, as pip does for a user), checks that it holds every file of every
model folder byte for byte (models/<name>/*, not wsinfer/) and every module, installs it into a fresh
virtual environment (not editable), and from a scratch folder, with no user models and no
$CELLVIEW_MODELS_DIR, runs `cellview --version`, `cellview models`, `cellview analyze` on the real
slide with the bundled default model, `cellview adapt` on generated labelled images (no torch in the venv),
`cellview serve` (the page and its own JavaScript from the installed package, the slide through
``POST /api/analyze``, a junk upload refused, its folder gone when it stops) and the viewer's
`--smoke-test` offscreen. Prints the wheel's
size and content and each step's time; exits non-zero on the first failure.

Without ../shared/data the real-slide analysis is skipped (said so) and a generated image is
analysed and opened instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
import zlib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
DEFAULT_MODEL = "colon-he"


class CheckFailed(Exception):
    pass


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command; its output is returned, or shown with the failure."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise CheckFailed(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def committed_files() -> list[str]:
    """The files a build from a clean clone sees: tracked ones plus new ones git does not ignore."""
    proc = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True)
    if proc.returncode != 0:
        raise CheckFailed(f"{REPO} is not a git checkout; the release check builds from its committed files")
    return sorted(f for f in proc.stdout.decode().split("\0") if f and (REPO / f).is_file())


def model_files(files: list[str]) -> list[str]:
    """models/<name>/<file>: what the wheel must carry (the WSInfer TorchScript in wsinfer/ stays out)."""
    return [f for f in files if f.startswith("models/") and f.count("/") == 2]


def build_wheel(files: list[str], work: Path) -> Path:
    src, dist = work / "src", work / "dist"
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)], cwd=work)
    [wheel] = dist.glob("cellview-*.whl")
    return wheel


def check_wheel(wheel: Path, files: list[str]) -> list[str]:
    """Every model file (same bytes) and module is in the wheel; nothing of wsinfer/. Returns a summary."""
    with zipfile.ZipFile(wheel) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    expected = model_files(files)
    if not expected:
        raise CheckFailed("the repository has no models/<name>/ files to ship")
    problems = []
    for f in expected:
        info = infos.get("cellview/" + f)
        data = (REPO / f).read_bytes()
        if info is None:
            problems.append(f"missing {f}")
        elif info.file_size != len(data) or info.CRC != zlib.crc32(data):
            problems.append(f"differs from the repository: {f}")
    for f in files:
        if f.startswith("cellview/") and f.endswith(".py") and f not in infos:
            problems.append(f"missing module {f}")
        elif f.startswith("cellview/serve/static/"):  # the web page's HTML, JavaScript, CSS and licences
            data = (REPO / f).read_bytes()
            info = infos.get(f)
            if info is None or info.file_size != len(data) or info.CRC != zlib.crc32(data):
                problems.append(f"missing or different web page file {f}")
    problems += [f"ships {n}" for n in infos if "/wsinfer/" in n]
    extra = sorted(n for n in infos if n.startswith("cellview/models/") and n[len("cellview/"):] not in expected)
    problems += [f"ships {n}, which is not in models/" for n in extra]
    if problems:
        raise CheckFailed("the wheel would ship without its models or modules:\n  " + "\n  ".join(problems))
    parts: dict[str, int] = defaultdict(int)
    for name, info in infos.items():
        if name.startswith("cellview/models/"):
            parts[f"model {name.split('/')[2]}"] += info.file_size
        elif name.startswith("cellview/base/resources/"):
            parts["fonts"] += info.file_size
        elif name.startswith("cellview/serve/static/"):
            parts["web page (JS, CSS)"] += info.file_size
        else:
            parts["code, recipes, metadata"] += info.file_size
    total = sum(i.file_size for i in infos.values())
    lines = [f"{wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB ({wheel.stat().st_size:,} bytes), "
             f"{total / 1e6:.1f} MB unpacked, {len(infos)} files; the models' {len(expected)} files are all there"]
    lines += [f"  {part:<26} {size / 1e6:6.1f} MB" for part, size in sorted(parts.items())]
    return lines


def make_venv(work: Path, wheel: Path) -> Path:
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    # --no-compile: byte-compiling the dependencies took a third of the install (7 of 21 s) and proves nothing.
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-compile", str(wheel)], cwd=work,
        timeout=900)
    return bin_dir


def scratch_env(bin_dir: Path, scratch: Path) -> dict[str, str]:
    """A user's shell: the venv first on PATH, no checkout on sys.path, no models but the bundled ones."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CELLVIEW_MODELS_DIR", "VIRTUAL_ENV", "CELLVIEW_SETTINGS_FILE")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", XDG_DATA_HOME=str(scratch / "data"),
               XDG_CACHE_HOME=str(scratch / "cache"), XDG_CONFIG_HOME=str(scratch / "config"),
               CELLVIEW_CACHE_DIR=str(scratch / "cache" / "cellview"), QT_QPA_PLATFORM="offscreen")
    return env


def generated_image(python: Path, scratch: Path, env: dict[str, str]) -> Path:
    path = scratch / "generated-he.png"
    code = ("import numpy as np, sys; from PIL import Image; rng = np.random.default_rng(0); "
            "img = np.full((768, 1024, 3), 245, np.uint8); img[100:700, 100:900] = (200, 120, 170); "
            "img[100:700, 100:900] += rng.integers(0, 40, (600, 800, 1), dtype=np.uint8); "
            "Image.fromarray(img).save(sys.argv[1])")
    run([str(python), "-c", code, str(path)], cwd=scratch, env=env)
    return path


def multipart(fields: dict[str, str], name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "cellview-release-check-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def check_serve(cellview: str, scratch: Path, env: dict[str, str], slide: Path, mpp: list[str]) -> str:
    """`cellview serve` from the installed wheel: the page, its own assets, an analysis, a refusal, the cleanup."""
    import re
    import signal
    import urllib.error
    import urllib.request

    proc = subprocess.Popen([cellview, "serve", "--port", "0", "--device", "cpu"], cwd=scratch, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        found = re.search(r"serving on (http://127\.0\.0\.1:\d+)/ \(this machine only\)", first)
        if not found:
            raise CheckFailed(f"cellview serve did not say it serves on localhost: {first!r}{proc.stderr.read()[-2000:]}")
        url = found.group(1)

        def get(path: str) -> bytes:
            with urllib.request.urlopen(url + path, timeout=60) as r:
                return r.read()

        page = get("/").decode()
        if '<input type="file"' not in page:
            raise CheckFailed("GET / has no file input")
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
        for asset in assets:
            if get(asset) != (REPO / "cellview/serve" / asset.lstrip("/")).read_bytes():
                raise CheckFailed(f"{asset} differs from the repository's")
        if re.search(r'(?:src|href)="(?:https?:)?//', page):
            raise CheckFailed("the page loads something from elsewhere")
        fields = {"mpp": mpp[1]} if mpp else {}
        body, ctype = multipart(fields, slide.name, slide.read_bytes())
        req = urllib.request.Request(url + "/api/analyze", data=body, headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=600) as r:
            answer = json.loads(r.read())
        if not answer.get("call", {}).get("category") or answer.get("model") != DEFAULT_MODEL:
            raise CheckFailed(f"POST /api/analyze answered {answer}")
        csv = get(answer["outputs"]["csv"]["url"]).decode()
        body, ctype = multipart({}, "junk.svs", b"not a slide\n" * 64)
        try:
            urllib.request.urlopen(urllib.request.Request(url + "/api/analyze", data=body,
                                                          headers={"Content-Type": ctype}), timeout=60)
            raise CheckFailed("a junk upload was accepted")
        except urllib.error.HTTPError as exc:
            refusal = f"{exc.code} {json.loads(exc.read())['error']}"
            if not 400 <= exc.code < 500:
                raise CheckFailed(f"a junk upload got {refusal}") from None
        runs = list((scratch / "cache" / "cellview" / "serve").glob(f"run-{proc.pid}-*"))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    if not runs or any(r.exists() for r in runs):
        raise CheckFailed(f"the server's folder {runs} was not removed when it stopped")
    return (f"{url}: page + {len(assets)} assets from the package; {slide.name}: call \"{answer['call']['words']}\", "
            f"{len(csv.splitlines()) - 1} CSV rows; junk upload: {refusal}; folder removed on Ctrl-C")


def ram_folder() -> str | None:
    """/dev/shm when it is there, executable and roomy: writing and then deleting the ~1 GB test venv
    on this shared disk took 20-30 s each; in memory the deletion is instant. None: the usual temp."""
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    if st.f_flag & os.ST_NOEXEC or not os.access("/dev/shm", os.W_OK) or st.f_bavail * st.f_frsize < 4e9:
        return None
    return "/dev/shm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, default=SLIDE, help=f"real slide to analyse (default {SLIDE})")
    parser.add_argument("--keep", type=Path, help="build and install in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cellview-release-", dir=ram_folder()))
    work.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, float]] = []
    passed = 0

    def step(name: str, fn):
        nonlocal passed
        t0 = time.perf_counter()
        try:
            result = fn()
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"{name}: timed out after {exc.timeout:.0f} s") from exc
        except CheckFailed as exc:
            raise CheckFailed(f"{name}: {exc}") from exc
        steps.append((name, time.perf_counter() - t0))
        passed += 1
        print(f"release check: {name} ok ({steps[-1][1]:.1f} s)", flush=True)
        return result

    try:
        files = step("list the committed files", committed_files)
        wheel = step("build the wheel", lambda: build_wheel(files, work))
        for line in step("wheel holds every model file and module", lambda: check_wheel(wheel, files)):
            print(f"  {line}")
        bin_dir = step("install into a fresh venv (not editable)", lambda: make_venv(work, wheel))
        scratch = work / "scratch"
        scratch.mkdir(exist_ok=True)
        env = scratch_env(bin_dir, scratch)
        python, cellview = str(bin_dir / "python"), str(bin_dir / "cellview")

        def installed_package():
            where = run([python, "-c", "import cellview; print(cellview.__file__)"], cwd=scratch, env=env).strip()
            if not Path(where).resolve().is_relative_to(bin_dir.parent.resolve()):
                raise CheckFailed(f"cellview is imported from {where}, not from the fresh venv")
            return where

        step("cellview is imported from the venv", installed_package)
        version = step("cellview --version", lambda: run([cellview, "--version"], cwd=scratch, env=env).strip())
        print(f"  {version}")

        def models():
            out = run([cellview, "models"], cwd=scratch, env=env)
            names = sorted({f.split("/")[1] for f in model_files(files) if f.endswith("/model.onnx")})
            missing = [n for n in names if f"\n{n} (bundled with CellView" not in out]
            if missing:
                raise CheckFailed(f"the installed cellview does not list its bundled models {missing}:\n{out}")
            cards = {n: next((line.split("card: ", 1)[1] for line in out.split(f"\n{n} (bundled", 1)[1].splitlines()[1:3]
                              if line.strip().startswith("card: ")), "") for n in names}
            no_card = [n for n, c in cards.items()
                       if not c or not Path(c).is_file() or bin_dir.parent.resolve() not in Path(c).resolve().parents]
            if no_card:
                raise CheckFailed(f"the installed cellview lists no model card (in the venv) for {no_card}:\n{out}")
            return out

        print("  " + step("cellview models lists the bundled models", models).strip().replace("\n", "\n  "))
        if args.slide.is_file():
            slide = args.slide

            def analyze():
                out_dir = scratch / "out"
                log = run([cellview, "analyze", str(slide), "--out", str(out_dir), "-q", "--device", "cpu"],
                          cwd=scratch, env=env)
                meta = json.loads((out_dir / f"{slide.stem}.json").read_text(encoding="utf-8"))
                written = sorted(p.suffix for p in out_dir.iterdir())
                if meta["model"]["name"] != DEFAULT_MODEL or written != [".csv", ".geojson", ".json", ".png"]:
                    raise CheckFailed(f"expected the four outputs of {DEFAULT_MODEL}, got {written}, "
                                      f"model {meta['model']['name']}:\n{log}")
                return log.strip()

            log = step(f"cellview analyze {slide.name} (bundled default model)", analyze)
            print("  " + log.replace("\n", "\n  "))
            mpp: list[str] = []
        else:
            print(f"release check: {args.slide} is absent (no ../shared/data here): the real-slide analysis is "
                  "SKIPPED; a generated image is analysed and opened instead", flush=True)
            slide, mpp = generated_image(Path(python), scratch, env), ["--mpp", "0.5"]
            step(f"cellview analyze {slide.name} (bundled default model)", lambda: run(
                [cellview, "analyze", str(slide), *mpp, "--out", str(scratch / "out"), "-q", "--device", "cpu"],
                cwd=scratch, env=env))

        def adapt():
            """A lab without the training stack adapts the bundled model: labelled images, no torch."""
            if run([python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                   cwd=scratch, env=env).strip() != "True":
                raise CheckFailed("torch is installed in the fresh venv; it must not be a viewer dependency")
            lab = scratch / "lab"
            lab.mkdir(exist_ok=True)
            code = ("import numpy as np, sys; from PIL import Image; "
                    "tints = {'malignant': (120, 60, 150), 'benign': (200, 110, 180), 'normal': (235, 170, 200)}; "
                    "rows = ['image,label']\n"
                    "for cat, tint in tints.items():\n"
                    "    for k in range(2):\n"
                    "        rng = np.random.default_rng(k); img = np.full((480, 480, 3), tint, np.uint8); "
                    "img += rng.integers(0, 30, (480, 480, 1), dtype=np.uint8); "
                    "Image.fromarray(img).save(f'{cat}_{k}.png'); rows.append(f'{cat}_{k}.png,{cat}')\n"
                    "open('labels.csv', 'w').write('\\n'.join(rows) + '\\n')")
            run([python, "-c", code], cwd=lab, env=env)
            log = run([cellview, "adapt", "--labels", str(lab / "labels.csv"), "--mpp", "0.5", "--out",
                       str(scratch / "adapted"), "--force", "-q", "--device", "cpu"], cwd=scratch, env=env)
            written = {p.name for p in (scratch / "adapted").iterdir()}
            if not {"model.onnx", "model.json", "MODEL_CARD.md", "adaptation.json"} <= written:
                raise CheckFailed(f"cellview adapt wrote {sorted(written)}:\n{log}")
            return log

        print("  " + step("cellview adapt without torch (labelled images)", adapt).strip().replace("\n", "\n  "))
        print("  " + step("cellview serve from the wheel (page, assets, analyze, junk, cleanup)",
                          lambda: check_serve(cellview, scratch, env, slide, mpp)))

        def smoke():
            out = run([cellview, "--smoke-test", str(slide)], cwd=scratch, env=env, timeout=300)
            listed = next((line.split("models: ", 1)[1].split(", ") for line in out.splitlines()
                           if line.startswith("smoke test: models: ")), [])
            if "smoke test: OK" not in out or DEFAULT_MODEL not in listed:
                raise CheckFailed(f"the viewer's smoke test did not open the slide with the bundled models:\n{out}")
            return out

        print("  " + step("viewer --smoke-test (offscreen)", smoke).strip().replace("\n", "\n  "))
    except CheckFailed as exc:
        print(f"release check FAILED: {exc}", file=sys.stderr)
        print(f"release: {passed} passed, 1 failed")
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"release check: OK in {time.perf_counter() - t_start:.1f} s "
          f"({', '.join(f'{name} {s:.0f} s' for name, s in steps if s >= 1)})")
    print(f"release: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
