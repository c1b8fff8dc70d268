"""Fuzz the slide and image readers with mutants of the real files in ../shared/data.

    python bench/fuzz_slides.py --count 10000 --out /work/runs/cohort/fuzz [--workers 2] [--timeout 60]

Each mutant (see cellview/testing/fuzzing.py for the mutators) runs `cellview info` and `cellview analyze`
as one task on a local Dask cluster of worker processes, so a native crash kills only its worker.
The analyze step uses a tiny toy ONNX model (64-px tiles at 2 µm/px, cellview.testing.synthetic.make_toy_model)
so each mutant costs reading and decoding, not inference. Outcomes: ok, clean_error, traceback,
crash (contained), hang (per-mutant timeout). Resumable: results go to OUT/results.jsonl and a rerun
skips the mutant ids already there. Mutants that end in traceback/crash/hang are kept in OUT/work/.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.testing.fuzzing import OUTCOMES, MutantResult, Source, run_fuzz  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


def default_sources(data: Path) -> list[Source]:
    slides = data / "slides"
    dicom = sorted((slides / "derived" / "CMU-1-Small-Region-dicom").glob("*.dcm"), key=lambda p: p.stat().st_size)
    out = [
        Source(str(slides / "CMU-1-Small-Region.svs")),
        Source(str(slides / "derived" / "CMU-1-Small-Region-pyramid.tiff")),
        Source(str(slides / "fixtures" / "small.svs")),
        Source(str(slides / "fixtures" / "boxes.tiff"), mpp_um=0.5),
        Source(str(slides / "fixtures" / "boxes_0.dcm"), (str(slides / "fixtures" / "boxes_1.dcm"),), mpp_um=0.5),
    ]
    for f in (dicom[0], dicom[-1]):  # a coarse level and level 0 of the DICOM slide, with the other files
        out.append(Source(str(f), tuple(str(o) for o in dicom if o != f)))
    images = sorted((data / "glas" / "images").glob("*.png"))[:2]
    images += sorted((data / "ebhi_seg" / "images").rglob("*.jpg"))[:2]
    images += sorted((data / "lc25000_lung" / "images").rglob("*.jpeg"))[:1]
    images += sorted((data / "lc25000_colon" / "images").rglob("*.jp*g"))[:1]
    out += [Source(str(p), mpp_um=0.5) for p in images]  # plain images carry no pixel size
    return [s for s in out if Path(s.path).exists()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=20261130, help="mutant i uses seed SEED + i")
    ap.add_argument("--out", type=Path, default=Path("/work/runs/cohort/fuzz"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant before it counts as a hang")
    ap.add_argument("--memory-limit", default="3GiB", help="per worker; beyond it the worker is restarted")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()

    import signal

    import dask
    from distributed import Client, LocalCluster

    def stop(signum, frame):  # noqa: ARG001 - SIGTERM (and SIGINT under nohup) end the run cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    from cellview.testing.synthetic import make_toy_model

    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "model" / "model.onnx"
    if not model.exists():
        make_toy_model(model.parent, patch_px=64, spacing_um=2.0)
    sources = default_sources(args.data)
    if not sources:
        print(f"no sources under {args.data}", file=sys.stderr)
        return 2
    log_path = args.out / "results.jsonl"
    done: dict[int, dict] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[int(row["mutant_id"])] = row
            except (ValueError, KeyError):
                continue
    todo = [(i, args.seed + i) for i in range(args.count) if i not in done]
    print(f"{len(sources)} sources, {args.count} mutants, {len(done)} already done, {len(todo)} to run; "
          f"timeout {args.timeout:g} s, {args.workers} workers", flush=True)
    counts = collections.Counter(r["outcome"] for r in done.values())
    t0 = time.perf_counter()
    n_new = 0
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,  # a dead worker = that mutant's outcome
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit=args.memory_limit, silence_logs=logging.CRITICAL)
    client = Client(cluster)
    with open(log_path, "a") as log:
        def on_result(r: MutantResult) -> None:
            nonlocal n_new
            n_new += 1
            counts[r.outcome] += 1
            log.write(json.dumps(asdict(r)) + "\n")
            log.flush()
            if r.outcome in ("traceback", "crash", "hang"):
                print(f"  #{r.mutant_id} {r.outcome}: {Path(r.source).name} seed {r.seed} {r.mutator} "
                      f"({r.what}): {r.detail}", flush=True)
            if n_new % 100 == 0:
                rate = n_new / (time.perf_counter() - t0)
                print(f"{len(done) + n_new}/{args.count} " + ", ".join(f"{k} {counts[k]}" for k in OUTCOMES)
                      + f"; {rate:.2f} mutants/s", flush=True)

        try:
            run_fuzz(client, sources, todo, str(args.out / "work"), str(model), args.timeout, on_result,
                     in_flight=args.workers * 2)
        finally:
            client.close()
            cluster.close()
    wall = time.perf_counter() - t0
    rows = {}
    for line in log_path.read_text().splitlines():
        row = json.loads(line)
        rows[int(row["mutant_id"])] = row
    total = collections.Counter(r["outcome"] for r in rows.values())
    by_source = collections.defaultdict(collections.Counter)
    by_mutator = collections.defaultdict(collections.Counter)
    for r in rows.values():
        by_source[Path(r["source"]).name][r["outcome"]] += 1
        by_mutator[r["mutator"]][r["outcome"]] += 1
    summary = {"mutants": len(rows), "outcomes": {k: total[k] for k in OUTCOMES}, "this_run_wall_s": round(wall, 1),
               "this_run_mutants": n_new, "by_source": by_source, "by_mutator": by_mutator}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{len(rows)} mutants: " + ", ".join(f"{k} {total[k]}" for k in OUTCOMES))
    print(f"this run: {n_new} mutants in {wall:.0f} s ({n_new / wall if wall else 0:.2f}/s)")
    for name, c in sorted(by_source.items()):
        print(f"  {name[:40]:40s} " + " ".join(f"{k}={c[k]}" for k in OUTCOMES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
