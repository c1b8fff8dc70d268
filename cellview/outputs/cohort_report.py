"""The cohort's tables: OUT/cohort.csv, cohort.json and cohort.html, each written atomically.

One row per slide that has an outcome (ok, skipped or failed). The client rewrites the three
files as slides finish, so a run killed at any moment leaves valid tables that list every slide
finished so far; slides not reached yet are counted as pending in cohort.json.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS
from cellview.base.files import atomic_write_text
from cellview.outputs.export import spreadsheet_safe

COHORT_CSV, COHORT_JSON, COHORT_HTML = "cohort.csv", "cohort.json", "cohort.html"
THUMBS_DIR = "cohort-thumbs"
"""Per-slide heatmap thumbnails (JPEG) that cohort.html shows, linked relatively."""

STATUSES = ("ok", "skipped", "failed")
CSV_COLUMNS = (
    "path", "name", "status", "call", "call_text", "tiles", *(f"share_{c}" for c in CATEGORIES), "in_domain_fraction",
    "provider", "seconds", "worker", "attempts", "error",
)
"""``call``: the slide call's category (``analysis.call.CALL_STATES``; ``not_analysed`` for a failed slide);
``call_text``: its words, as the console, the metadata JSON and the PNG legend print them."""


@dataclass(frozen=True)
class SlideOutcome:
    """What became of one slide; crosses from the worker to the client (plain, picklable)."""

    path: str
    name: str
    stem: str
    status: str  # "ok" | "skipped" | "failed"
    tiles: int = 0  # tiles classified
    shares: tuple[float, ...] | None = None  # per CATEGORIES, of the classified tiles
    in_domain_fraction: float | None = None
    provider: str = ""
    seconds: float = 0.0
    worker: str = ""
    attempts: int = 0
    error: str = ""
    summary: tuple[str, ...] = ()  # the lines the CLI prints for this slide
    traceback: str = ""  # set only for unexpected errors (a bug), printed by the CLI
    outputs: tuple[str, ...] = field(default=(), compare=False)  # file names in the output folder
    thumbnail: str = ""  # path of the thumbnail relative to the output folder, "" if none
    call: str = ""  # the slide call's category (analysis.call.CALL_STATES); "" : not analysed
    call_text: str = ""  # the call's words (SlideCall.text)

    @property
    def call_category(self) -> str:
        return self.call or "not_analysed"

    def to_row(self) -> dict[str, str]:
        shares = self.shares or ()
        row = {
            "path": self.path, "name": self.name, "status": self.status, "call": self.call_category,
            "call_text": self.call_text or _NOT_ANALYSED_TEXT, "tiles": str(self.tiles),
            "in_domain_fraction": "" if self.in_domain_fraction is None else f"{self.in_domain_fraction:.4f}",
            "provider": self.provider, "seconds": f"{self.seconds:.2f}", "worker": self.worker,
            "attempts": str(self.attempts), "error": self.error,
        }
        for cat, share in zip(CATEGORIES, shares or (None,) * len(CATEGORIES)):
            row[f"share_{cat}"] = "" if share is None else f"{share:.4f}"
        return row


_NOT_ANALYSED_TEXT = "Not analysed: no result for this slide"


def shares_from_counts(counts: dict[str, int]) -> tuple[float, ...] | None:
    total = sum(int(counts.get(c, 0)) for c in CATEGORIES)
    if total <= 0:
        return None
    return tuple(int(counts.get(c, 0)) / total for c in CATEGORIES)


def csv_table(outcomes: Sequence[SlideOutcome]) -> str:
    """cohort.csv: one row per slide; text cells are neutralised for spreadsheets (``spreadsheet_safe``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for o in outcomes:
        writer.writerow({k: spreadsheet_safe(v) for k, v in o.to_row().items()})
    return buf.getvalue()


def totals(outcomes: Sequence[SlideOutcome], n_planned: int, wall_s: float) -> dict[str, Any]:
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    analysed = [o for o in outcomes if o.status == "ok"]
    tiles = sum(o.tiles for o in analysed)
    return {
        "slides": n_planned, **counts, "pending": max(0, n_planned - len(outcomes)),
        "tiles_analysed": tiles, "wall_s": round(wall_s, 3),
        "slides_per_hour": round(len(analysed) / wall_s * 3600, 2) if wall_s > 0 else None,
        "tiles_per_s": round(tiles / wall_s, 2) if wall_s > 0 else None,
    }


@dataclass
class CohortTables:
    """Keeps cohort.csv / .json / .html current; rewrites are throttled except the last."""

    out_dir: Path
    run_info: dict[str, Any]
    n_planned: int
    min_interval_s: float = 1.0
    html_interval_s: float = 15.0
    outcomes: dict[str, SlideOutcome] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    _last_write: float = 0.0
    _last_html: float = 0.0
    _dirty: bool = False

    def add(self, outcome: SlideOutcome, position: int | None = None) -> None:
        self.outcomes[outcome.stem] = outcome
        self.order.setdefault(outcome.stem, len(self.order) if position is None else position)
        self._dirty = True

    def flush(self) -> None:
        """Write what changed since the last write once the interval has passed (call it often)."""
        if self._dirty:
            self.write()

    def sorted_outcomes(self) -> list[SlideOutcome]:
        return sorted(self.outcomes.values(), key=lambda o: self.order.get(o.stem, 1 << 30))

    def write(self, state: str = "running", force: bool = False) -> None:
        """Rewrite the tables (at most every ``min_interval_s`` unless ``force``)."""
        now = time.time()
        if not force and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        self._dirty = False
        rows = self.sorted_outcomes()
        atomic_write_text(self.out_dir / COHORT_CSV, csv_table(rows))
        meta = dict(self.run_info)
        meta["state"] = state
        meta["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
        meta["totals"] = totals(rows, self.n_planned, now - self.started)
        meta["failed"] = [{"path": o.path, "error": o.error} for o in rows if o.status == "failed"]
        atomic_write_text(self.out_dir / COHORT_JSON, json.dumps(meta, indent=2))
        if force or now - self._last_html >= self.html_interval_s:
            self._last_html = now
            atomic_write_text(self.out_dir / COHORT_HTML, cohort_html(rows, meta, self.out_dir))


# ----------------------------------------------------------------------------- cohort.html

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1b1b1b;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}.sub{color:#555;margin:0 0 16px}
.totals span{display:inline-block;margin-right:14px;padding:3px 10px;border-radius:12px;background:#eee}
.totals .ok{background:#e3f4e6}.totals .failed{background:#fde2e1}.totals .skipped{background:#e8eefc}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 3px #0002;margin-top:14px}
th,td{padding:6px 10px;border-bottom:1px solid #e6e6e6;text-align:left;vertical-align:middle}
th{background:#f0f0f0;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img.thumb{max-width:180px;max-height:140px;display:block;border:1px solid #ccc;background:#fff}
.status{font-weight:600;padding:2px 8px;border-radius:10px}
.status.ok{background:#e3f4e6;color:#1d6b2c}.status.skipped{background:#e8eefc;color:#2a4a9a}
.status.failed{background:#fde2e1;color:#9b1c1c}
.bar{display:flex;width:140px;height:12px;border-radius:3px;overflow:hidden;background:#eee;margin-bottom:3px}
.bar i{display:block;height:100%}.shares{font-size:12px;color:#444;white-space:nowrap}
.err{color:#9b1c1c;font-size:12px;margin-top:3px}.files a{margin-right:6px;font-size:12px}
td.slide{min-width:8em;max-width:420px;overflow-wrap:anywhere}td small{color:#555}td.call{min-width:11em;max-width:300px}
.foot{color:#777;font-size:12px;margin-top:14px}
"""

_JS = """
document.querySelectorAll('th[data-type]').forEach(function(th){
  th.addEventListener('click', function(){
    var col = th.cellIndex;
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(function(h){ h.classList.remove('asc','desc'); });
    th.classList.add(asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    var num = th.dataset.type === 'num';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      if (num){ x = x === '' ? -Infinity : parseFloat(x); y = y === '' ? -Infinity : parseFloat(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""

_HEADERS = (("Thumbnail", None), ("Slide", "text"), ("Status", "text"), ("Call", "num"), ("Tiles", "num"),
            *((f"{c.capitalize()} %", "num") for c in CATEGORIES), ("In-domain %", "num"),
            ("Seconds", "num"), ("Worker", "text"), ("Files", None))


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


_CALL_ORDER = ("malignant", "benign", "normal", "out_of_domain", "too_little_tissue", "not_analysed")
"""Sorting the Call column: worst finding first (``analysis.call.CALL_STATES``)."""


_KEEP_TOGETHER = re.compile(r"(?<=\d) (?=%|mm²|tiles?\b|regions?\b)|(?<=[≥≤]) (?=\d)")
"""A figure and its unit, a sign and its figure: never wrapped apart in a narrow column ("≥" above "0.9)")."""


def _call_cell(o: SlideOutcome) -> str:
    """The call's headline in its colour, its evidence below (the words of ``SlideCall.text``)."""
    def esc(text: str) -> str:
        return _KEEP_TOGETHER.sub("&nbsp;", html.escape(text))

    cat = o.call_category
    headline, _, evidence = (o.call_text or _NOT_ANALYSED_TEXT).partition(": ")
    colour = CATEGORY_COLORS.get(cat, "#555555")
    rank = _CALL_ORDER.index(cat) if cat in _CALL_ORDER else len(_CALL_ORDER)
    return (f'<td class="call" data-sort="{rank}"><b style="color:{colour}">{esc(headline)}</b>'
            + (f"<br><small>{esc(evidence)}</small>" if evidence else "") + "</td>")


def _row_html(o: SlideOutcome, out_dir: Path) -> str:
    esc = html.escape
    thumb = ""
    if o.thumbnail and (out_dir / o.thumbnail).exists():
        link = o.thumbnail
        if f"{o.stem}.png" in o.outputs:
            link = f"{o.stem}.png"
        thumb = (f'<a href="{esc(link)}"><img class="thumb" loading="lazy" src="{esc(o.thumbnail)}" '
                 f'alt="{esc(o.name)} heatmap"></a>')
    shares = o.shares
    bar = ""
    if shares:
        parts = "".join(f'<i style="width:{100 * s:.2f}%;background:{CATEGORY_COLORS[c]}" title="{c}"></i>'
                        for c, s in zip(CATEGORIES, shares))
        bar = f'<div class="bar">{parts}</div>'
    cells = [
        f"<td>{thumb}</td>",
        f'<td class="slide" data-sort="{esc(o.name.lower())}"><b>{esc(o.name)}</b><br><small>{esc(o.path)}</small>'
        + (f'<div class="err">{esc(o.error)}</div>' if o.status == "failed" else "") + "</td>",
        f'<td data-sort="{esc(o.status)}"><span class="status {esc(o.status)}">{esc(o.status)}</span></td>',
        _call_cell(o),
        f'<td class="num" data-sort="{o.tiles}">{o.tiles}{bar}</td>',
    ]
    for k in range(len(CATEGORIES)):
        v = shares[k] if shares else None
        cells.append(f'<td class="num" data-sort="{"" if v is None else f"{v:.6f}"}">{_pct(v)}</td>')
    f = o.in_domain_fraction
    cells.append(f'<td class="num" data-sort="{"" if f is None else f"{f:.6f}"}">{_pct(f)}</td>')
    cells.append(f'<td class="num" data-sort="{o.seconds:.3f}">{o.seconds:.1f}</td>')
    cells.append(f'<td data-sort="{esc(o.worker)}"><small>{esc(o.worker)}</small></td>')
    links = " ".join(f'<a href="{esc(n)}">{esc(n.rsplit(".", 1)[-1])}</a>' for n in o.outputs)
    cells.append(f'<td class="files">{links}</td>')
    return f'<tr data-status="{esc(o.status)}">' + "".join(cells) + "</tr>"


def cohort_html(outcomes: Sequence[SlideOutcome], meta: dict[str, Any], out_dir: Path) -> str:
    """One self-contained page (inline CSS and JS, no network): a sortable table of the slides."""
    esc = html.escape
    t = meta.get("totals", {})
    model = meta.get("model", {})
    head = "".join(
        f'<th data-type="{kind}">{esc(name)}</th>' if kind else f"<th>{esc(name)}</th>" for name, kind in _HEADERS
    )
    body = "\n".join(_row_html(o, out_dir) for o in outcomes)
    rate = t.get("slides_per_hour")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CellView cohort: {esc(out_dir.name)}</title>
<style>{_CSS}</style></head>
<body>
<h1>CellView cohort</h1>
<p class="sub">Model {esc(str(model.get("name", "")))} {esc(str(model.get("version", "")))}
(sha256 {esc(str(model.get("sha256", ""))[:12])}…) · {esc(str(meta.get("cluster", "")))} ·
state: {esc(str(meta.get("state", "")))} · updated {esc(str(meta.get("updated", "")))}</p>
<div class="totals"><span>{t.get("slides", 0)} slides</span><span class="ok">{t.get("ok", 0)} analysed</span>
<span class="skipped">{t.get("skipped", 0)} up to date</span><span class="failed">{t.get("failed", 0)} failed</span>
<span>{t.get("pending", 0)} pending</span><span>{t.get("tiles_analysed", 0)} tiles</span>
{f"<span>{rate:.0f} slides/hour</span>" if rate else ""}</div>
<table id="cohort"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<p class="foot">Click a column to sort. The call is the worst finding that passes the model's thresholds
(malignant before benign before normal; see the model card); shares are of the classified tiles; colour = category
(<span style="color:{CATEGORY_COLORS["malignant"]}">malignant</span>,
<span style="color:{CATEGORY_COLORS["benign"]}">benign</span>,
<span style="color:{CATEGORY_COLORS["normal"]}">normal</span>). Research use only; not for clinical diagnosis.</p>
<script>{_JS}</script>
</body></html>
"""


def read_outcome_from_metadata(meta: dict[str, Any], path: str, name: str, stem: str, out_dir: Path) -> SlideOutcome:
    """The row of a slide skipped as up to date, from the metadata JSON its earlier run wrote."""
    tiles = meta.get("tiles", {}) or {}
    thumb = Path(THUMBS_DIR) / f"{stem}.jpg"
    frac = meta.get("in_domain_fraction")
    return SlideOutcome(
        path=path, name=name, stem=stem, status="skipped", tiles=int(tiles.get("done", 0) or 0),
        shares=shares_from_counts(tiles.get("per_category", {}) or {}),
        in_domain_fraction=float(frac) if isinstance(frac, (int, float)) else None,
        provider=str(meta.get("provider", "")),
        seconds=float((meta.get("timings_s") or {}).get("total_s", 0.0) or 0.0),
        outputs=tuple(meta.get("outputs", ())) + (f"{stem}.json",),
        thumbnail=thumb.as_posix() if (out_dir / thumb).exists() else "",
        call=str((meta.get("call") or {}).get("category", "")), call_text=str((meta.get("call") or {}).get("text", "")),
    )


def process_label() -> str:
    """host:pid of this process (the worker column for in-process runs)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
