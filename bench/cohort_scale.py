"""Cohort throughput: the same slides in process, on local:1 and on local:2, back to back.

    python bench/cohort_scale.py [--slides 20] [--model colon-he] [--configs inprocess,local:1,local:2]
                                 [--work /work/runs/cohort/scale]

Generates the cohort once with bench/make_large_slide.py at mixed sizes (real tissue texture,
JPEG pyramids), then runs `cellview analyze FOLDER --out ... --no-cache --force` once per
configuration, one after the other so all see the same machine load. Prints slides/hour,
tiles/s, wall time, the cluster start-up and the peak RSS of the client and of each worker
process (sampled with psutil every 0.2 s), and writes WORK/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# (width, height) in level-0 px at 0.5 µm/px: 5 sizes × 4 slides, from about 25 to 400 tiles.
SIZES = [(6000, 5000), (10000, 8000), (14000, 10000), (18000, 14000), (22000, 16000)]


def make_cohort(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        path = folder / f"slide{i:02d}-{w}x{h}.tiff"
        if not path.exists():
            cached = Path(subprocess.run([sys.executable, str(REPO / "bench" / "make_large_slide.py"), "--width",
                                          str(w), "--height", str(h)], check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1])
            os.link(cached, path) if cached.stat().st_dev == folder.stat().st_dev else path.write_bytes(
                cached.read_bytes())
        out.append(path)
    return out


def run_config(config: str, slides_dir: Path, out: Path, model: str) -> dict:
    import psutil

    cmd = [sys.executable, "-m", "cellview.cli", "analyze", str(slides_dir), "--out", str(out), "--model", model,
           "--no-cache", "--force", "-q"]
    if config != "inprocess":
        cmd += ["--cluster", config]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peaks: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                rss = p.memory_info().rss / 2**20
                cmdline = " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            role = "client" if p.pid == proc.pid else ("worker" if "spawn_main" in cmdline else "other")
            if rss > peaks.get(p.pid, ("", 0.0))[1]:
                peaks[p.pid] = (role, rss)
        time.sleep(0.2)
    err = proc.stderr.read() if proc.stderr else ""
    wall = time.perf_counter() - t0
    meta = json.loads((out / "cohort.json").read_text())
    totals = meta["totals"]
    workers = sorted((rss for role, rss in peaks.values() if role == "worker"), reverse=True)
    return {
        "config": config, "exit_code": proc.returncode, "wall_s": round(wall, 1),
        "cohort_wall_s": totals["wall_s"], "startup_s": round(wall - totals["wall_s"], 1),
        "slides_ok": totals["ok"], "slides_failed": totals["failed"], "tiles": totals["tiles_analysed"],
        "slides_per_hour": round(totals["ok"] / wall * 3600, 1), "tiles_per_s": round(totals["tiles_analysed"] / wall, 2),
        "client_peak_rss_mib": round(max((rss for role, rss in peaks.values() if role == "client"), default=0)),
        "worker_peak_rss_mib": [round(r) for r in workers if r > 100],
        "stderr_tail": err.strip().splitlines()[-3:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--model", default="colon-he")
    ap.add_argument("--configs", default="inprocess,local:1,local:2")
    ap.add_argument("--work", type=Path, default=Path("/work/runs/cohort/scale"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    slides = make_cohort(args.work / "slides", args.slides)
    print(f"{len(slides)} slides ready ({time.perf_counter() - t0:.0f} s): "
          + ", ".join(sorted({p.stem.split('-')[1] for p in slides})), flush=True)
    load = os.getloadavg()
    results = []
    for config in args.configs.split(","):
        r = run_config(config, args.work / "slides", args.work / f"out-{config.replace(':', '')}", args.model)
        results.append(r)
        print(f"{config:10s} exit {r['exit_code']}  wall {r['wall_s']:7.1f} s (start-up {r['startup_s']:.1f})  "
              f"{r['slides_ok']} slides, {r['tiles']} tiles  {r['slides_per_hour']:7.1f} slides/h  "
              f"{r['tiles_per_s']:6.2f} tiles/s  peak RSS client {r['client_peak_rss_mib']} MiB, "
              f"workers {r['worker_peak_rss_mib']} MiB", flush=True)
    base = results[0]["wall_s"] if results and results[0]["config"] == "inprocess" else None
    for r in results[1:]:
        if base:
            print(f"{r['config']}: wall {r['wall_s'] / base:.2f}× in-process ({(r['wall_s'] - base) / base:+.0%})")
    summary = {"cores": os.cpu_count(), "loadavg_before": load, "loadavg_after": os.getloadavg(),
               "slides": [p.name for p in slides], "results": results}
    (args.work / "scale.json").write_text(json.dumps(summary, indent=2))
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
