"""Reader fuzzing: a fixed-seed 200-mutant run on the session's Dask cluster, and every finding so far.

The mutants come from small slides and images made here (plus openslide's tiny fixtures when
../shared/data is present), so the run costs decoding, not inference. Each finding of
bench/fuzz_slides.py is kept as a regression: its generating (source, seed), re-run in a fresh
process that must end with a clean message, no traceback, and bounded memory.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cellview.testing import fuzzing
from cellview.testing.fuzzing import Source, mutate, run_fuzz

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fuzz_sources(tmp_path_factory, request) -> list[Source]:
    from cellview.testing.synthetic import synthetic_slide_rgb, write_pyramid_tiff

    root = tmp_path_factory.mktemp("fuzz-src")
    rgb = synthetic_slide_rgb()[256:640, 256:768]  # 512 × 384 with parts of two coloured blocks
    sources = [
        Source(str(write_pyramid_tiff(root / "zlib.tiff", rgb, 0.5, levels=2, tile=128))),
        Source(str(write_pyramid_tiff(root / "jpeg.tiff", rgb, 0.5, levels=2, tile=128, compression="jpeg"))),
    ]
    small = cv2.cvtColor(rgb[:150, :200], cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(root / "image.png"), small)
    cv2.imwrite(str(root / "image.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 90])
    sources += [Source(str(root / "image.png"), mpp_um=0.5), Source(str(root / "image.jpg"), mpp_um=0.5)]
    try:
        fixtures = request.getfixturevalue("data_dir") / "slides" / "fixtures"
    except pytest.skip.Exception:
        fixtures = None
    if fixtures is not None and fixtures.is_dir():
        sources += [Source(str(fixtures / "small.svs")), Source(str(fixtures / "boxes.tiff"), mpp_um=0.5),
                    Source(str(fixtures / "boxes_0.dcm"), (str(fixtures / "boxes_1.dcm"),), mpp_um=0.5)]
    return sources


def test_mutants_are_reproducible_and_varied(fuzz_sources):
    data = Path(fuzz_sources[0].path).read_bytes()
    assert mutate(data, "tiff", 5) == mutate(data, "tiff", 5)
    assert mutate(data, "tiff", 5)[0] != mutate(data, "tiff", 6)[0]
    kinds = {mutate(data, "tiff", s)[1] for s in range(60)}
    assert {"bitflip", "truncate", "zero_block", "header", "tiff_tag"} <= kinds


def test_fixed_seed_fuzz_200_mutants(dask_cluster, fuzz_sources, toy_model, tmp_path):
    from distributed import Client

    results = []
    with Client(dask_cluster) as client:
        run_fuzz(client, fuzz_sources, [(i, 1000 + i) for i in range(200)], str(tmp_path / "work"), str(toy_model),
                 timeout_s=60, on_result=results.append, in_flight=4)
    counts = collections.Counter(r.outcome for r in results)
    bad = [r for r in results if r.outcome not in ("ok", "clean_error")]
    assert not bad, "\n".join(f"{r.outcome} {Path(r.source).name} seed {r.seed} {r.what}: {r.detail}" for r in bad)
    assert len(results) == 200
    # Not vacuous: mutants both survive and fail cleanly, and every source was exercised.
    assert counts["ok"] >= 20 and counts["clean_error"] >= 20, counts
    assert {r.source for r in results} == {s.path for s in fuzz_sources}


def test_a_hang_is_a_timeout_with_the_stacks_kept(toy_model, fuzz_sources, tmp_path):
    """The watchdog ends the process on a too-long mutant and leaves its stacks for the report."""
    code = (
        "import sys; from cellview.testing.fuzzing import Source, run_mutant\n"
        f"run_mutant(1, Source({fuzz_sources[0].path!r}), 3, {str(tmp_path)!r}, {str(toy_model)!r}, timeout_s=0.001)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert fuzzing.dead_worker_outcome(str(tmp_path), 1)[0] == "hang"
    assert fuzzing.dead_worker_outcome(str(tmp_path), 2)[0] == "crash"


_DICOM_L0 = "slides/derived/CMU-1-Small-Region-dicom/1.2.826.0.1.3680043.8.498.54872330635847651601921572959641201940.dcm"

# Findings of bench/fuzz_slides.py: (file under ../shared/data, seed, what it did before the fix).
FINDINGS = [
    ("glas/images/train_1.png", 20261234, "PNG IDAT length 0xFFFFFFFF: OpenCV allocated 4 GiB (worker killed)"),
    (_DICOM_L0, 20264558, "bit flips in the DICOM frame offset table: OpenSlide segfaulted"),
    (_DICOM_L0, 20266077, "bit flips in the DICOM frame offset table: OpenSlide segfaulted"),
    ("slides/derived/CMU-1-Small-Region-dicom/1.2.826.0.1.3680043.8.498.52213585721056882286725655585413832426.dcm",
     20268188, "TotalPixelMatrixColumns 65535 on the coarsest level: it became level 0, 19,437 failing tiles, timeout"),
    ("slides/fixtures/small.svs", 20267839, "zeroed bytes: a near-constant tissue signal, np.histogram ValueError"),
]


def _run_cli_measured(argv: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run cellview in a fresh process: (exit code, output, peak RSS in MiB)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) pytest process across exec.
    code = (
        "import re, sys\nfrom cellview.cli import main\n"
        f"rc = main({argv!r})\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())\n"
        "print('PEAK_MIB', int(hwm.group(1)) / 1024 if hwm else 0, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)  # a hang fails here
    peak = float(proc.stderr.rsplit("PEAK_MIB", 1)[1].split()[0]) if "PEAK_MIB" in proc.stderr else float("inf")
    return proc.returncode, proc.stdout + proc.stderr, peak


@pytest.mark.parametrize("rel, seed, before", FINDINGS, ids=[f"{Path(f).name}-{s}" for f, s, _ in FINDINGS])
def test_fuzz_findings_stay_fixed(rel, seed, before, data_dir, toy_model, tmp_path):
    source = data_dir / rel
    if not source.exists():
        pytest.skip(f"{source} is absent")
    siblings = tuple(str(p) for p in source.parent.glob("*.dcm") if p != source) if source.suffix == ".dcm" else ()
    mutant = fuzzing.reproduce(Source(str(source), siblings), seed, tmp_path / "m")
    for argv in (["info", str(mutant)],
                 ["analyze", str(mutant), "--out", str(tmp_path / "out"), "--model", str(toy_model), "-q",
                  "--no-cache", "--mpp", "0.5"]):
        code, output, peak_mib = _run_cli_measured(argv, REPO)
        assert code in (0, 1), output
        assert "Traceback" not in output, output
        assert peak_mib < 1500, f"{argv[0]} peaked at {peak_mib:.0f} MiB ({before})"


def test_png_with_a_chunk_longer_than_the_file_is_refused_cheaply(tmp_path):
    """Generated twin of the GlaS finding: no decoder sees the 4 GiB chunk."""
    ok, buf = cv2.imencode(".png", np.full((64, 64, 3), 200, np.uint8))
    data = bytearray(buf.tobytes())
    idat = data.index(b"IDAT") - 4
    data[idat:idat + 4] = (0xFFFF_FFFF).to_bytes(4, "big")
    path = tmp_path / "huge-chunk.png"
    path.write_bytes(bytes(data))
    code, output, peak_mib = _run_cli_measured(["info", str(path)], REPO)
    assert code == 1 and "not a readable slide or image" in output
    assert peak_mib < 1000, peak_mib


def test_otsu_on_a_nearly_constant_float32_signal():
    """Fuzz finding (small.svs, seed 20267839): a 2e-6 range of float32 values made np.histogram raise."""
    from cellview.analysis.tissue import otsu_threshold

    values = np.array([0.5, 0.5 + 1e-6, 0.5 + 2e-6], np.float32)
    assert 0.5 <= otsu_threshold(values) <= 0.5 + 2e-6
