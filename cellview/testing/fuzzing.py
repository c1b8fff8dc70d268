"""Mutation fuzzing of the slide and image readers (``bench/fuzz_slides.py`` and the test suite).

A mutant is a real slide or image with a structure-aware or blind change (bit flips, truncation,
zeroed blocks, header bytes, TIFF tag values, DICOM elements, PNG chunks, JPEG segments), fully
determined by ``(source, seed)``. Each mutant runs ``cellview info`` and ``cellview analyze`` as a
task on a Dask worker process, so a native crash is contained: it kills only that worker. A task
outcome is one of ``OUTCOMES``; a hang is a per-mutant timeout, enforced by faulthandler's watchdog
(a C thread that needs no GIL), which dumps the stacks into the mutant's folder and exits the worker.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUTCOMES = ("ok", "clean_error", "traceback", "crash", "hang")
INTERESTING_32 = (0, 1, 2, 7, 8, 15, 16, 17, 255, 256, 4096, 65535, 65536, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF)
INTERESTING_16 = (0, 1, 2, 7, 8, 15, 16, 255, 256, 0x7FFF, 0x8000, 0xFFFF)


# ----------------------------------------------------------------------------- mutators


def kind_of(path: Path) -> str:
    """The container a source is (decides which structure-aware mutators apply)."""
    head = path.read_bytes()[:132]
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:2] == b"\xff\xd8":
        return "jpeg"
    return "other"


def bit_flips(data: bytearray, rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 17))
    # Half the time near the start, where headers and directories usually are.
    limit = len(data) if rng.random() < 0.5 else min(len(data), 4096)
    for pos in rng.integers(0, limit, n):
        data[int(pos)] ^= 1 << int(rng.integers(0, 8))
    return f"{n} bit flips"


def truncate(data: bytearray, rng: np.random.Generator) -> str:
    cut = int(rng.integers(1, len(data))) if rng.random() < 0.7 else int(rng.integers(1, min(len(data), 2048)))
    del data[cut:]
    return f"truncated at {cut}"


def zero_block(data: bytearray, rng: np.random.Generator) -> str:
    size = int(2 ** rng.uniform(4, 14))
    start = int(rng.integers(0, max(1, len(data) - size)))
    data[start:start + size] = bytes(min(size, len(data) - start))
    return f"zeroed {size} bytes at {start}"


def header_bytes(data: bytearray, rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 9))
    limit = min(len(data), 512)
    for pos in rng.integers(0, limit, n):
        data[int(pos)] = int(rng.choice([0, 0xFF, 0x7F, 0x80, int(rng.integers(0, 256))]))
    return f"{n} header bytes"


def _tiff_entries(data: bytes) -> list[tuple[int, int, int, int, str]]:
    """(entry offset, tag, type, count, byte order) of every IFD entry of a classic or BigTIFF file."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    entries = []
    try:
        off = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
        seen = set()
        while 0 < off < len(data) and off not in seen and len(seen) < 64:
            seen.add(off)
            n = struct.unpack_from(order + ("Q" if big else "H"), data, off)[0]
            size = 20 if big else 12
            base = off + (8 if big else 2)
            for i in range(min(n, 512)):
                e = base + i * size
                if e + size > len(data):
                    break
                tag, typ = struct.unpack_from(order + "HH", data, e)
                count = struct.unpack_from(order + ("Q" if big else "I"), data, e + 4)[0]
                entries.append((e, tag, typ, count, order + ("B" if big else "C")))
            nxt = base + n * size
            if nxt + (8 if big else 4) > len(data):
                break
            off = struct.unpack_from(order + ("Q" if big else "I"), data, nxt)[0]
    except struct.error:
        pass
    return entries


def tiff_tag(data: bytearray, rng: np.random.Generator) -> str:
    """Change one IFD entry's count, type or value to an interesting number."""
    entries = _tiff_entries(bytes(data))
    if not entries:
        return header_bytes(data, rng)
    # Geometry and layout tags first: they are what readers trust for allocations.
    geometry = {256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 322, 323, 324, 325, 330, 347, 530}
    pool = [e for e in entries if e[1] in geometry] if rng.random() < 0.7 else entries
    e, tag, typ, count, fmt = (pool or entries)[int(rng.integers(0, len(pool or entries)))]
    order, big = fmt[0], fmt[1] == "B"
    what = int(rng.integers(0, 3))
    value = int(rng.choice(INTERESTING_32))
    if what == 0:  # count
        struct.pack_into(order + ("Q" if big else "I"), data, e + 4, value)
        return f"TIFF tag {tag} count → {value}"
    if what == 1:  # type
        new_type = int(rng.integers(0, 19))
        struct.pack_into(order + "H", data, e + 2, new_type)
        return f"TIFF tag {tag} type → {new_type}"
    voff = e + (12 if big else 8)
    if typ == 3 and rng.random() < 0.5:
        struct.pack_into(order + "H", data, voff, int(rng.choice(INTERESTING_16)))
    else:
        struct.pack_into(order + "I", data, voff, value & 0xFFFF_FFFF)
    return f"TIFF tag {tag} value → {value}"


_DICOM_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"OV", b"SV", b"UV"}


def _dicom_elements(data: bytes) -> list[tuple[int, int, int, bytes, int, int]]:
    """(offset, group, element, VR, length field offset, length field size) of top-level explicit-VR elements."""
    out = []
    pos = 132
    while pos + 8 <= len(data) and len(out) < 4096:
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6]
        if not vr.isalpha():
            break
        if vr in _DICOM_LONG_VRS:
            if pos + 12 > len(data):
                break
            length = struct.unpack_from("<I", data, pos + 8)[0]
            out.append((pos, group, elem, vr, pos + 8, 4))
            if length == 0xFFFF_FFFF:  # undefined length (sequences, encapsulated pixel data): stop here
                break
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            out.append((pos, group, elem, vr, pos + 6, 2))
            pos += 8 + length
    return out


def dicom_element(data: bytearray, rng: np.random.Generator) -> str:
    """Change one data element's length or value (rows, columns, frames, offsets ...)."""
    elements = _dicom_elements(bytes(data))
    if not elements:
        return header_bytes(data, rng)
    important = {(0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0008), (0x0048, 0x0006), (0x0048, 0x0007),
                 (0x0028, 0x0100), (0x0028, 0x0002), (0x0002, 0x0010), (0x0028, 0x0004)}
    pool = [e for e in elements if (e[1], e[2]) in important] if rng.random() < 0.6 else elements
    pos, group, elem, vr, loff, lsize = (pool or elements)[int(rng.integers(0, len(pool or elements)))]
    name = f"({group:04X},{elem:04X}) {vr.decode(errors='replace')}"
    if rng.random() < 0.3:
        value = int(rng.choice(INTERESTING_32 if lsize == 4 else INTERESTING_16))
        struct.pack_into("<I" if lsize == 4 else "<H", data, loff, value)
        return f"DICOM {name} length → {value}"
    voff = loff + lsize
    if vr in (b"US", b"SS") and voff + 2 <= len(data):
        value = int(rng.choice(INTERESTING_16))
        struct.pack_into("<H", data, voff, value)
    elif vr in (b"UL", b"SL") and voff + 4 <= len(data):
        value = int(rng.choice(INTERESTING_32))
        struct.pack_into("<I", data, voff, value)
    elif voff < len(data):
        value = int(rng.integers(0, 256))
        data[voff] = value
        if vr in (b"IS", b"DS") and voff + 2 <= len(data):  # text numbers: make them large or odd
            text = rng.choice([b"0 ", b"-1", b"99999999", b"1e9 ", b"nan "])
            data[voff:voff + min(len(text), len(data) - voff)] = text[:len(data) - voff]
            value = -1
    else:
        return header_bytes(data, rng)
    return f"DICOM {name} value → {value}"


def _png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 8
    while pos + 12 <= len(data) and len(out) < 10000:
        length = struct.unpack_from(">I", data, pos)[0]
        ctype = data[pos + 4:pos + 8]
        out.append((pos, length, ctype))
        pos += 12 + length
    return out


def png_chunk(data: bytearray, rng: np.random.Generator) -> str:
    """Change an IHDR field, a chunk length, or corrupt chunk data with a valid CRC."""
    import zlib

    chunks = _png_chunks(bytes(data))
    if not chunks:
        return header_bytes(data, rng)
    pos, length, ctype = chunks[int(rng.integers(0, len(chunks)))]
    what = int(rng.integers(0, 3))
    if ctype == b"IHDR" and what != 1 and pos + 8 + 13 <= len(data):
        field = int(rng.integers(0, 5))
        if field < 2:
            value = int(rng.choice(INTERESTING_32))
            struct.pack_into(">I", data, pos + 8 + 4 * field, value)
        else:
            value = int(rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255]))
            data[pos + 8 + 8 + (field - 2)] = value
        crc = zlib.crc32(bytes(data[pos + 4:pos + 8 + 13]))
        struct.pack_into(">I", data, pos + 8 + 13, crc)
        return f"PNG IHDR field {field} → {value}"
    if what == 1:
        value = int(rng.choice(INTERESTING_32))
        struct.pack_into(">I", data, pos, value)
        return f"PNG {ctype.decode(errors='replace')} length → {value}"
    end = min(pos + 8 + length, len(data))
    if end - (pos + 8) > 0:
        for p in rng.integers(pos + 8, end, int(rng.integers(1, 9))):
            data[int(p)] = int(rng.integers(0, 256))
        if end + 4 <= len(data):
            struct.pack_into(">I", data, end, zlib.crc32(bytes(data[pos + 4:end])))
    return f"PNG {ctype.decode(errors='replace')} data corrupted (CRC fixed)"


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and len(out) < 256:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            out.append((pos, marker, struct.unpack_from(">H", data, pos + 2)[0]))
            break
        length = struct.unpack_from(">H", data, pos + 2)[0]
        out.append((pos, marker, length))
        pos += 2 + length
    return out


def jpeg_segment(data: bytearray, rng: np.random.Generator) -> str:
    """Change a frame header's size or components, a segment length, or bytes of a table."""
    segs = _jpeg_segments(bytes(data))
    if not segs:
        return header_bytes(data, rng)
    sof = [s for s in segs if s[1] in (0xC0, 0xC1, 0xC2)]
    if sof and rng.random() < 0.4:
        pos = sof[0][0]
        field = int(rng.integers(0, 4))
        offs = {0: pos + 4, 1: pos + 5, 2: pos + 7, 3: pos + 9}[field]  # precision, height, width, components
        if field in (1, 2):
            value = int(rng.choice(INTERESTING_16))
            struct.pack_into(">H", data, offs, value)
        else:
            value = int(rng.choice([0, 1, 3, 4, 8, 12, 16, 255]))
            data[offs] = value
        return f"JPEG SOF field {field} → {value}"
    pos, marker, length = segs[int(rng.integers(0, len(segs)))]
    if rng.random() < 0.4:
        value = int(rng.choice(INTERESTING_16))
        struct.pack_into(">H", data, pos + 2, value)
        return f"JPEG marker {marker:02X} length → {value}"
    end = min(pos + 2 + length, len(data))
    if end > pos + 4:
        for p in rng.integers(pos + 4, end, int(rng.integers(1, 5))):
            data[int(p)] = int(rng.integers(0, 256))
    return f"JPEG marker {marker:02X} table bytes"


GENERIC: dict[str, Callable[[bytearray, np.random.Generator], str]] = {
    "bitflip": bit_flips, "truncate": truncate, "zero_block": zero_block, "header": header_bytes,
}
STRUCTURED: dict[str, tuple[str, Callable[[bytearray, np.random.Generator], str]]] = {
    "tiff": ("tiff_tag", tiff_tag), "dicom": ("dicom_element", dicom_element),
    "png": ("png_chunk", png_chunk), "jpeg": ("jpeg_segment", jpeg_segment),
}


def mutate(data: bytes, container: str, seed: int) -> tuple[bytes, str, str]:
    """(mutant bytes, mutator name, what was changed), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    names = list(GENERIC)
    if container in STRUCTURED:
        names += [STRUCTURED[container][0]] * 3  # structure-aware changes find more than blind ones
    name = names[int(rng.integers(0, len(names)))]
    fn = GENERIC.get(name) or STRUCTURED[container][1]
    what = fn(buf, rng)
    return bytes(buf), name, what


# ----------------------------------------------------------------------------- running a mutant


@dataclass(frozen=True)
class Source:
    """A file to mutate; ``siblings`` are copied beside the mutant (the other files of a DICOM slide)."""

    path: str
    siblings: tuple[str, ...] = ()
    mpp_um: float | None = None  # passed to analyze (--mpp) for files that do not say


@dataclass(frozen=True)
class MutantResult:
    mutant_id: int
    source: str
    seed: int
    mutator: str
    what: str
    outcome: str
    detail: str
    seconds: float


def mutant_dir(work_root: str | Path, mutant_id: int) -> Path:
    return Path(work_root) / f"m{mutant_id:06d}"


def write_mutant(source: Source, seed: int, folder: Path) -> tuple[Path, str, str]:
    """Write the mutant of ``source`` for ``seed`` (plus siblings) into ``folder``."""
    src = Path(source.path)
    data, mutator, what = mutate(src.read_bytes(), kind_of(src), seed)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / src.name
    target.write_bytes(data)
    for sib in source.siblings:
        shutil.copyfile(sib, folder / Path(sib).name)
    return target, mutator, what


def _call_cli(argv: list[str]) -> tuple[int | None, str, str]:
    """Run ``cellview ARGV`` in this process: (exit code or None, output, uncaught traceback)."""
    import traceback

    from cellview.cli import main

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(argv)
        return code, out.getvalue(), ""
    except SystemExit as exc:  # argparse
        return int(exc.code or 0), out.getvalue(), ""
    except BaseException:  # noqa: BLE001 - exactly what the fuzzer is looking for
        return None, out.getvalue(), traceback.format_exc()


_quieted = False


def _in_worker() -> bool:
    from cellview.scale.cohort import _dask_worker

    return _dask_worker() is not None


def run_mutant(mutant_id: int, source: Source, seed: int, work_root: str, model: str,
               timeout_s: float = 60.0, keep: bool = False) -> MutantResult:
    """Write the mutant, run ``cellview info`` and ``cellview analyze`` on it, classify the outcome.

    Meant to run in a Dask worker process: a native crash ends the process (the client records
    it), and a hang ends it through faulthandler after ``timeout_s`` with the stacks in
    ``<mutant folder>/hang.txt``.
    """
    global _quieted
    if not _quieted and _in_worker():  # libtiff/OpenCV warnings would flood the worker's stderr
        quiet_native_stderr()
        _quieted = True
    t0 = time.perf_counter()
    folder = mutant_dir(work_root, mutant_id)
    target, mutator, what = write_mutant(source, seed, folder)
    hang = open(folder / "hang.txt", "w")  # noqa: SIM115 - faulthandler writes to it from C
    faulthandler.dump_traceback_later(timeout_s, exit=True, file=hang)
    outcome, detail = "ok", ""
    try:
        runs = [
            ["info", str(target)],
            ["analyze", str(target), "--out", str(folder / "out"), "--model", model, "-q", "--no-cache",
             "--png-size", "256", "--workers", "1", *(["--mpp", str(source.mpp_um)] if source.mpp_um else [])],
        ]
        for argv in runs:
            code, output, tb = _call_cli(argv)
            if tb or "Traceback (most recent call last)" in output:
                outcome = "traceback"
                text = tb or output[output.index("Traceback (most recent call last)"):]
                detail = f"{argv[0]}: " + " | ".join(text.strip().splitlines()[-3:])[:600]
                break
            if code not in (0, None):
                outcome = "clean_error"
                detail = detail or f"{argv[0]}: " + (output.strip().splitlines() or [""])[-1][:300]
    finally:
        faulthandler.cancel_dump_traceback_later()
        hang.close()
    if not keep and outcome in ("ok", "clean_error"):
        shutil.rmtree(folder, ignore_errors=True)
    return MutantResult(mutant_id, source.path, seed, mutator, what, outcome, detail, time.perf_counter() - t0)


def dead_worker_outcome(work_root: str, mutant_id: int) -> tuple[str, str]:
    """What ended a worker that died on a mutant: 'hang' (watchdog dump present) or 'crash'."""
    hang = mutant_dir(work_root, mutant_id) / "hang.txt"
    try:
        text = hang.read_text(errors="replace").strip()
    except OSError:
        text = ""
    if text:
        return "hang", " | ".join(text.splitlines()[:4])[:600]
    return "crash", "the worker process died (native crash, abort or out of memory)"


def choose_source(sources: list[Source], seed: int) -> Source:
    return sources[int(np.random.default_rng([seed, 7]).integers(0, len(sources)))]


def run_fuzz(client: object, sources: list[Source], seeds: list[tuple[int, int]], work_root: str, model: str,
             timeout_s: float, on_result: Callable[[MutantResult], None], in_flight: int = 8) -> None:
    """Run the mutants ``(mutant_id, seed)`` on the Dask client, a bounded number in flight."""
    from distributed import as_completed

    pending = list(reversed(seeds))
    futures: dict[object, tuple[int, int, Source]] = {}

    def submit_one() -> None:
        mid, seed = pending.pop()
        src = choose_source(sources, seed)
        fut = client.submit(run_mutant, mid, src, seed, work_root, model, timeout_s,  # type: ignore[attr-defined]
                            key=f"fuzz-{mid}-{seed}", pure=False)
        futures[fut] = (mid, seed, src)
        ac.add(fut)

    def handle(fut: object) -> None:
        mid, seed, src = futures.pop(fut)
        if fut.status == "finished":  # type: ignore[attr-defined]
            result = fut.result()  # type: ignore[attr-defined]
        else:
            outcome, detail = dead_worker_outcome(work_root, mid)
            result = MutantResult(mid, src.path, seed, "?", "", outcome, detail, float("nan"))
            try:  # the mutator and change, recomputed without running anything
                _, mutator, what = mutate(Path(src.path).read_bytes(), kind_of(Path(src.path)), seed)
                result = MutantResult(mid, src.path, seed, mutator, what, outcome, detail, float("nan"))
            except OSError:
                pass
        fut.release()  # type: ignore[attr-defined]
        on_result(result)
        if pending:
            submit_one()

    ac = as_completed()
    for _ in range(min(in_flight, len(pending))):
        submit_one()
    while not ac.is_empty():
        batch = ac.next_batch(block=False)
        if not batch:
            time.sleep(0.1)  # polling keeps the main thread responsive to signals (SIGTERM, Ctrl-C)
        for fut in batch:
            handle(fut)


def reproduce(source: Source, seed: int, folder: Path) -> Path:
    """The mutant file for ``(source, seed)``: what a regression test regenerates."""
    return write_mutant(source, seed, folder)[0]


def quiet_native_stderr() -> None:
    """Send this process's C-level stderr (libtiff/OpenCV warnings) to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
