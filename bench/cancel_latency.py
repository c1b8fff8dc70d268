"""How long Cancel takes, and what classifying a batch in steps costs (issue 19).

Runs ``analyze`` on a slide on the CPU, cancels a fixed delay after the first batch arrives and prints
the time from the cancel to the ``Finished`` event and to the generator's end (the reader threads
joined), for the pipeline as it is (a batch classified in steps of about ``CANCEL_STEP_S``) and with
whole batches (as before issue 19). Then the throughput of a full run both ways, alternating.

    python bench/cancel_latency.py [--slide PATH] [--model lung-he] [--batch-size 32] [--runs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def cancel_once(slide: str, classifier, params, delay_s: float) -> tuple[float, float, int]:
    from cellview.analysis.pipeline import BatchDone, CancelToken, Finished, analyze

    token = CancelToken()
    cancelled_at: list[float] = []
    finished_at = 0.0
    done = 0
    for event in analyze(slide, classifier, params, token):
        if isinstance(event, BatchDone) and not cancelled_at and not token.cancelled:
            def later() -> None:
                time.sleep(delay_s)
                cancelled_at.append(time.perf_counter())
                token.cancel()
            threading.Thread(target=later, daemon=True).start()
        if isinstance(event, Finished):
            finished_at, done = time.perf_counter(), event.result.n_done
    ended_at = time.perf_counter()
    if not cancelled_at:
        return float("nan"), float("nan"), done
    return finished_at - cancelled_at[0], ended_at - cancelled_at[0], done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE))
    ap.add_argument("--model", default="lung-he", help="lung-he: 0.4 µm/px, about 130 tiles on CMU-1")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (1: a slow device)")
    args = ap.parse_args()

    import cellview.analysis.pipeline as pipeline
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import ModelSpec
    from cellview.analysis.results import AnalysisParams

    classifier = OnnxClassifier(ModelSpec.load(resolve_model(args.model)), device="cpu", intra_op_threads=args.threads)
    params = AnalysisParams(batch_size=args.batch_size, device="cpu")
    stepped = pipeline._Steps.size

    def whole_batches(self, n: int) -> int:
        return n

    ways = {"steps": stepped, "whole batches": whole_batches}
    print(f"{args.model} on CPU, batch {args.batch_size}, slide {Path(args.slide).name}")
    for name, size in ways.items():
        pipeline._Steps.size = size
        lat = [cancel_once(args.slide, classifier, params, 0.2) for _ in range(args.runs)]
        fin = [f for f, _, _ in lat]
        end = [e for _, e, _ in lat]
        print(f"cancel ({name}): to Finished median {statistics.median(fin):.2f} s (max {max(fin):.2f}), "
              f"to readers joined median {statistics.median(end):.2f} s; tiles kept {[d for *_, d in lat]}")
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.runs):
        for name, size in ways.items():
            pipeline._Steps.size = size
            result = pipeline.run_analysis(args.slide, classifier, params)
            rates[name].append(result.n_done / result.timings["tiles_s"])
    pipeline._Steps.size = stepped
    for name, values in rates.items():
        print(f"throughput ({name}): median {statistics.median(values):.1f} tiles/s "
              f"(runs {', '.join(f'{v:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
