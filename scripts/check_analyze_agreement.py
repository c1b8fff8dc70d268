"""Does `cellview analyze` call images as the evaluation does? Runs the real CLI on a subset and compares.

    python scripts/check_analyze_agreement.py RUN MODEL_DIR --out DIR [--per-source 60] [--seed 0]

For a subset of the run's images (every image of a source with ≤ 100 images, else ``--per-source``
drawn at random) it runs ``cellview analyze FILES --mpp <source spacing> --model MODEL_DIR`` exactly
as a user would, reads the CSVs, and makes the image call from them with the external rule
(confidence-weighted vote of ``pred_category``, weight = ``confidence``). The same images' calls are
computed from the run's cached evaluation tiles with the run's model (``model.pt``) and the exported
sidecar's temperature. It prints the tile counts, the largest probability difference and the share of
images whose call agrees; any disagreement is skew between evaluation and the app.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.analysis.classifier import probabilities  # noqa: E402
from cellview.analysis.model_spec import CATEGORIES, ModelSpec  # noqa: E402
from cellview.analysis.results import image_calls  # noqa: E402
from cellview.train.train import Run, load_model, pooled  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-source", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run = Run(args.run)
    recipe, cfg, model, _ = load_model(run)
    spec = ModelSpec.load(args.model)
    samples, _ = run.samples()
    rng = np.random.default_rng(args.seed)
    pick: list[int] = []
    for src in sorted({s.source for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.source == src]
        pick += idx if len(idx) <= 100 else sorted(rng.choice(idx, args.per_source, replace=False).tolist())
    # the app's calls
    app_votes: dict[int, tuple[int, int, np.ndarray]] = {}
    for src in sorted({samples[i].source for i in pick}):
        ids = [i for i in pick if samples[i].source == src]
        out = args.out / src
        cmd = ["cellview", "analyze", *[samples[i].path for i in ids], "--mpp", str(samples[ids[0]].spacing_um_px),
               "--model", str(args.model), "--out", str(out), "--formats", "csv,json", "--no-cache", "--force", "-q",
               "--device", "cpu"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        for i in ids:
            stem = Path(samples[i].path).stem
            with open(out / f"{stem}.csv", newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r["status"] == "done"]
            votes = np.zeros(len(CATEGORIES))
            for r in rows:
                votes[CATEGORIES.index(r["pred_category"])] += float(r["confidence"])
            probs = np.array([[float(r[f"prob_{n}"]) for n in spec.class_names] for r in rows]).reshape(-1, len(spec.class_names))
            app_votes[i] = (int(votes.argmax()) if rows else -1, len(rows), probs)
    # the evaluation's calls from the cache
    feats, index = run.features("eval")
    keep = np.isin(index, pick)
    x = pooled(model.tail, feats[keep], cfg.cache_depth, "cpu")
    with torch.inference_mode():
        logits = model.fc(torch.from_numpy(x)).numpy()
    probs = probabilities(logits, "softmax", spec.temperature)
    pred, _, _ = image_calls(probs, index[keep], len(samples), spec.class_categories, "vote")
    agree, tiles_equal, max_dp = 0, 0, 0.0
    for i in pick:
        app_call, n_app, p_app = app_votes[i]
        p_eval = probs[index[keep] == i]
        agree += int(app_call == pred[i])
        tiles_equal += int(n_app == len(p_eval))
        if n_app == len(p_eval) and n_app:
            max_dp = max(max_dp, float(np.abs(p_app - p_eval).max()))
    report = {"images": len(pick), "per_source": {s: sum(samples[i].source == s for i in pick)
                                                  for s in sorted({samples[i].source for i in pick})},
              "same_tile_count": tiles_equal, "same_image_call": agree,
              "max_tile_probability_difference": round(max_dp, 5),
              "note": "evaluation tiles are cached as float16 trunk activations; the app's CSV rounds to 4 decimals"}
    (args.out / "agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if agree == len(pick) else 1


if __name__ == "__main__":
    sys.exit(main())
