"""How long `cellview export` takes for a user's own model (issue 27: under 2 minutes on 2 cores).

    python bench/export_speed.py RUN [--rounds 1] [--keep DIR]
    python bench/export_speed.py --train-from ../shared/data/blood_all/images --run /tmp/my-blood

RUN is a ``cellview train --data`` run folder (a user's model: its INT8 copy is validated on the run's own
images, never on ../shared/data). ``--train-from FOLDER`` first trains the worked example of docs/byod.md on
that folder into ``--run`` (skipped when the run is already there). Each round runs the command line
``cellview export RUN --out TMP`` in a fresh process (imports included) with CELLVIEW_DATA_DIR pointing at an
empty folder, and prints the wall time, each phase's share (from the command's own lines), the load average
before and after, and whether the INT8 copy was validated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = '{"Benign": "benign", "Early": "malignant", "Pre": "malignant", "Pro": "malignant", "Normal": "normal"}'


def cellview(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[tuple[float, str]]]:
    """Run ``python -m cellview.cli ARGS`` from this checkout; (exit code, [(seconds since start, stderr line)])."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cellview.cli", *args], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        for part in line.replace("\r", "\n").splitlines():
            if part.strip() and "it/s]" not in part and "s/it]" not in part:
                lines.append((time.perf_counter() - t0, part.strip()))
    return proc.wait(), lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", type=Path)
    ap.add_argument("--run", dest="run_opt", type=Path)
    ap.add_argument("--train-from", type=Path, help="train docs/byod.md's worked example on this folder first")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="export here instead of a temporary folder")
    args = ap.parse_args()
    run = args.run or args.run_opt
    if run is None:
        ap.error("give RUN")
    if args.train_from and not (run / "model.pt").exists():
        t = time.perf_counter()
        code, _ = cellview("train", "--data", str(args.train_from), "--classes", CLASSES, "--spacing", "0.45",
                           "--field-um", "100", "--foreground", "stained-cells", "--group", "runs", "--views", "0",
                           "--name", "my-blood", "--out", str(run), "--no-eval")
        print(f"trained the worked example in {time.perf_counter() - t:.0f} s (exit {code})")
        if code:
            return code
    for k in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            out = args.keep or Path(tmp) / "model"
            empty = Path(tmp) / "no-shared-data"
            empty.mkdir()
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            code, lines = cellview("export", str(run), "--out", str(out), env={"CELLVIEW_DATA_DIR": str(empty)})
            seconds = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            after = os.getloadavg()[0]
            side = out / "model.int8.json"
            v = json.loads(side.read_text()).get("validation", {}) if side.exists() else {}
            print(f"round {k + 1}: cellview export {run} in {seconds:.1f} s wall, {cpu:.1f} s CPU (exit {code}), "
                  f"load {load:.1f} → "
                  f"{after:.1f}; INT8 {'validated' if v.get('passed') else 'not validated'} on "
                  f"{v.get('sets_from', '—')}")
            for at, line in lines:
                print(f"  {at:6.1f} s  {line[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
