"""`cellview serve` under load: N concurrent uploads (default 20), their latency, the throughput, nothing lost.

    python bench/serve_load.py [--slide ../shared/data/slides/CMU-1-Small-Region.svs] [--model colon-he]
                               [--uploads 20] [--same]

Starts ``cellview serve --port 0`` in its own process with an empty result cache, then N client threads each
upload the slide at once (``POST /api/jobs``) and follow their job until it ends. By default every upload is a
different file (the slide with k zero bytes appended: the same pixels, another content fingerprint, so every
one is analysed); ``--same`` uploads identical bytes (one analysis, the rest from the result cache).

Prints, per phase: the time to accept each upload (received, typed, checked, queued: the 202), the time until
each job ended, the throughput (slides and tiles per second over the whole burst), the server's peak memory,
and checks that nothing was lost: N distinct jobs, all done, every CSV downloadable with one row per tile.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CELLVIEW_DATA_DIR") or REPO.parent / "shared" / "data")


def start_server(model: str, cache: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "CELLVIEW_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "cellview.cli", "serve", "--port", "0", "--model", model],
                            stderr=subprocess.PIPE, text=True, env=env)
    for _ in range(50):
        line = proc.stderr.readline()
        found = re.search(r"serving on (http://\S+?)/? ", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its messages
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def peak_rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(found.group(1)) / 1024 if found else None


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(DATA / "slides" / "CMU-1-Small-Region.svs"))
    ap.add_argument("--model", default="colon-he")
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--same", action="store_true", help="identical bytes every time (the result cache answers)")
    args = ap.parse_args()
    slide = Path(args.slide)
    if not slide.exists():
        raise SystemExit(f"{slide} is absent")
    data = slide.read_bytes()
    n = args.uploads
    with tempfile.TemporaryDirectory(prefix="cellview-serve-bench-") as tmp:
        proc, url = start_server(args.model, Path(tmp) / "cache")
        load_before = os.getloadavg()[0]
        rows: list[dict] = [{} for _ in range(n)]
        barrier = threading.Barrier(n)

        def one(k: int) -> None:
            body = data if args.same else data + b"\0" * k  # the same pixels, another fingerprint
            with httpx.Client(base_url=url, timeout=600) as c:
                barrier.wait()
                t0 = time.perf_counter()
                r = c.post("/api/jobs", files={"file": (f"{slide.stem}-{k}{slide.suffix}", body)})
                rows[k].update(http=r.status_code, accepted_s=time.perf_counter() - t0, t0=t0)
                if r.status_code != 202:
                    rows[k]["error"] = r.text[:200]
                    return
                job = r.json()
                rows[k]["id"] = job["id"]
                while job["state"] not in ("done", "cancelled", "failed"):
                    time.sleep(0.1)
                    job = c.get(f"/api/jobs/{job['id']}").json()
                rows[k].update(ended_s=time.perf_counter() - t0, t_end=time.perf_counter(), state=job["state"],
                               tiles=job["progress"]["total"], from_cache=job["progress"]["from_cache"],
                               call=(job.get("call") or {}).get("category"))
                if job["state"] == "done":
                    csv = c.get(job["outputs"]["csv"]["url"])
                    rows[k]["csv_rows"] = csv.text.count("\n") - 1 if csv.status_code == 200 else -1

        threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss = peak_rss_mb(proc.pid)
        load_after = os.getloadavg()[0]
        proc.terminate()
        proc.wait(timeout=60)

    ok = [r for r in rows if r.get("state") == "done"]
    lost = [r for r in rows if r.get("state") != "done"]
    ids = {r.get("id") for r in rows if r.get("id")}
    csv_ok = all(r.get("csv_rows") == r.get("tiles") for r in ok)
    accepted = [r["accepted_s"] for r in rows if "accepted_s" in r]
    ended = [r["ended_s"] for r in ok]
    span = max(r["t_end"] for r in ok) - min(r["t0"] for r in rows) if ok else float("nan")
    tiles = sum(r["tiles"] for r in ok)
    cached = sum(bool(r.get("from_cache")) for r in ok)
    print(f"slide: {slide.name} ({len(data) / 2**20:.1f} MB), model {args.model}, {n} concurrent uploads, "
          f"{'identical bytes' if args.same else 'each a different file'}")
    print(f"load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores")
    print(f"accepted (202): {len(accepted)}/{n}; time to accept median {statistics.median(accepted):.2f} s, "
          f"p95 {pct(accepted, 0.95):.2f} s, max {max(accepted):.2f} s")
    if ended:
        print(f"ended: {len(ok)} done, {len(lost)} lost or failed; time to done median {statistics.median(ended):.1f} s, "
              f"p95 {pct(ended, 0.95):.1f} s, max {max(ended):.1f} s (queued behind one worker)")
        print(f"throughput: {len(ok) / span * 60:.1f} slides/min, {tiles / span:.1f} tiles/s over {span:.1f} s "
              f"({tiles} tiles, {cached} from the cache)")
    print(f"distinct job ids: {len(ids)}; every CSV has one row per tile: {csv_ok}; calls: "
          f"{sorted({r.get('call') for r in ok})}")
    print(f"server peak memory (VmHWM): {rss:.0f} MB" if rss else "server peak memory: unknown")
    return 0 if not lost and len(ids) == n and csv_ok else 1


if __name__ == "__main__":
    sys.exit(main())
