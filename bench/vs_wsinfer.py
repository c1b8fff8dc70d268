"""CellView vs WSInfer on the same slide, same weights, same patch size and spacing.

    python bench/vs_wsinfer.py SLIDE [--model colon-he] [--rounds 2] [--wsinfer-venv /tmp/wsinfer-venv]

WSInfer runs from its own virtual environment (its pins never touch ours); make it once with
the recipe in ../shared/notes/wsinfer-offline.md (or --install). Both tools get the same
TorchScript/ONNX export of one set of weights (models/<name>/wsinfer/ and model.onnx). Runs
alternate; each prints wall seconds, tiles, tiles/s and peak RSS of its whole process tree.
Then the ratio CellView/WSInfer and the agreement of per-tile probabilities on matching tiles.
Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _tree_rss_kib(root_pid: int) -> int:
    """Resident memory of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            pid, ppid = int(entry), int(fields["PPid"])
            rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
            children.setdefault(ppid, []).append(pid)
        except (OSError, KeyError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak tree RSS MiB, combined output) of one command."""
    peak = 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    reader.join()
    text = "".join(out)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{text[-3000:]}")
    return wall, peak / 1024, text


def read_probs(path: Path) -> dict[tuple[int, int], np.ndarray]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c.startswith("prob_")]
    return {(int(float(r["minx"])), int(float(r["miny"]))): np.array([float(r[c] or "nan") for c in cols]) for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--model", default="colon-he")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--wsinfer-venv", type=Path, default=Path("/tmp/wsinfer-venv"))
    ap.add_argument("--install", action="store_true", help="create the WSInfer venv first (needs PyPI)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="CellView's --precision (auto: the validated INT8 copy on a CPU)")
    ap.add_argument("--spacing", type=float,
                    help="run both tools at this µm/px instead of the model's (e.g. the slide's own, so "
                         "no resampling differs between the tools and the agreement check is exact)")
    args = ap.parse_args()

    model_dir = REPO / "models" / args.model
    ts, cfg, onnx = model_dir / "wsinfer" / "model.pt", model_dir / "wsinfer" / "config.json", model_dir / "model.onnx"
    for p in (ts, cfg, onnx):
        if not p.exists():
            print(f"missing {p} (export the model with `cellview export`)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="vs-wsinfer-"))
    if args.spacing:
        # Same weights, another declared spacing: copies of both configs, the weights linked.
        alt = work / "model"
        alt.mkdir()
        for src, name in ((onnx, "model.onnx"), (ts, "model.pt")):
            (alt / name).symlink_to(src.resolve())
        for src, name in ((model_dir / "model.json", "model.json"), (cfg, "config.json")):
            data = json.loads(src.read_text())
            data["spacing_um_px"] = args.spacing
            (alt / name).write_text(json.dumps(data))
        onnx, ts, cfg = alt / "model.onnx", alt / "model.pt", alt / "config.json"
    venv = args.wsinfer_venv
    if args.install and not (venv / "bin" / "wsinfer").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "wsinfer", "openslide-python", "openslide-bin",
                        "zarr<3", "tiffslide<3"], check=True)
    wsinfer = venv / "bin" / "wsinfer"
    if not wsinfer.exists():
        print(f"no WSInfer at {wsinfer}; pass --install or see ../shared/notes/wsinfer-offline.md", file=sys.stderr)
        return 2
    zoo = Path.home() / ".wsinfer-zoo" / "wsinfer-zoo-registry.json"
    if not zoo.exists():
        zoo.parent.mkdir(parents=True, exist_ok=True)
        zoo.write_text('{"models": {}}')
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cellview = shutil.which("cellview") or str(Path(sys.executable).parent / "cellview")

    slide_dir = work / "slides"
    slide_dir.mkdir()
    (slide_dir / args.slide.name).symlink_to(args.slide.resolve())
    figures: dict[str, list[tuple[float, float]]] = {"wsinfer": [], "cellview": []}
    loads: dict[str, list[str]] = {"wsinfer": [], "cellview": []}
    cv_model = ""

    def load() -> str:
        return f"{os.getloadavg()[0]:.2f}"

    ws_out = cv_out = work
    for r in range(args.rounds):
        ws_out = work / f"ws{r}"
        cmd = [str(wsinfer), "run", "--wsi-dir", str(slide_dir), "--results-dir", str(ws_out),
               "--model-path", str(ts), "--config", str(cfg), "--batch-size", str(args.batch_size),
               "--num-workers", str(args.workers)]
        before = load()
        wall, rss, _ = run_measured(cmd, env)
        figures["wsinfer"].append((wall, rss))
        loads["wsinfer"].append(f"{before}→{load()}")
        cv_out = work / f"cv{r}"
        cmd = [cellview, "analyze", str(args.slide), "--out", str(cv_out), "--model", str(onnx), "--formats", "csv",
               "--no-cache", "--force", "-q", "--batch-size", str(args.batch_size), "--workers", str(args.workers),
               "--device", args.device, "--precision", args.precision]
        before = load()
        wall, rss, out = run_measured(cmd, env)
        figures["cellview"].append((wall, rss))
        loads["cellview"].append(f"{before}→{load()}")
        cv_model = next((line for line in out.splitlines() if line.startswith("Model ")), "")

    ws_csv = next((ws_out / "model-outputs-csv").glob("*.csv"))
    cv_csv = cv_out / f"{args.slide.stem}.csv"
    ws, cv = read_probs(ws_csv), read_probs(cv_csv)
    n_tiles = {"wsinfer": len(ws), "cellview": len(cv)}
    spacing = args.spacing or json.loads(cfg.read_text())["spacing_um_px"]
    print(f"slide: {args.slide}  model: {args.model} at {spacing} µm/px  rounds: {args.rounds} (alternating)  "
          f"cores: {os.cpu_count()}")
    print(f"{'tool':<10}{'tiles':>8}{'wall s (best)':>15}{'tiles/s':>10}{'peak RSS MiB':>14}")
    best = {}
    for tool, runs in figures.items():
        wall = min(w for w, _ in runs)
        rss = max(m for _, m in runs)
        best[tool] = n_tiles[tool] / wall
        print(f"{tool:<10}{n_tiles[tool]:>8}{wall:>15.2f}{best[tool]:>10.1f}{rss:>14.0f}")
        print(f"{'':<10}all walls: {', '.join(f'{w:.2f}' for w, _ in runs)}; load average before→after: "
              f"{', '.join(loads[tool])}")
    print(f"CellView ran: {cv_model}")
    print(f"ratio CellView/WSInfer (tiles/s): {best['cellview'] / best['wsinfer']:.2f}; peak memory "
          f"CellView/WSInfer: {max(m for _, m in figures['cellview']) / max(m for _, m in figures['wsinfer']):.2f}")
    common = sorted(set(ws) & set(cv))
    if common:
        a = np.stack([ws[k] for k in common])
        b = np.stack([cv[k] for k in common])
        # CellView applies the fitted temperature T; WSInfer softmaxes raw logits. softmax(T·log p_T)
        # recovers the untempered probabilities, so the two tools' numbers are comparable.
        temperature = float(json.loads(onnx.with_suffix(".json").read_text()).get("temperature", 1.0))
        z = temperature * np.log(np.clip(b, 1e-12, 1.0))
        b = np.exp(z - z.max(axis=1, keepdims=True))
        b /= b.sum(axis=1, keepdims=True)
        print(f"(CellView probabilities un-tempered with T = {temperature:.3f} for the comparison)")
        diff = np.abs(a - b)
        agree = float(np.mean(a.argmax(1) == b.argmax(1)))
        print(f"matching tiles: {len(common)} (WSInfer only {len(ws) - len(common)}, CellView only {len(cv) - len(common)})")
        print(f"probabilities: mean |diff| {np.nanmean(diff):.4f}, max |diff| {np.nanmax(diff):.4f}; "
              f"same top class on {agree:.1%} of matching tiles")
    print(f"outputs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
