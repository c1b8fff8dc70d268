// CellView's page: upload, watch the analysis stream in over the slide, click a tile, download the files.
// Everything shown comes from the server's JSON and is put in the page as text (never as HTML).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let info = null;
  let viewer = null;
  let job = null; // the shown job: {id, status, overlay, fill, hatch, selected, events, ...}
  let pattern = null;
  let draws = 0;
  const offscreen = document.createElement("canvas");

  // ------------------------------------------------------------------------------------------- helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "style") Object.assign(node.style, v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function show(node, on) { node.classList.toggle("hidden", !on); }

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
    let body = null;
    try { body = await response.json(); } catch (e) { body = { error: response.statusText }; }
    if (!response.ok) {
      const err = new Error((body && body.error) || response.statusText);
      err.body = body; err.status = response.status;
      throw err;
    }
    return body;
  }

  function humanBytes(n) {
    for (const [unit, size] of [["GB", 1 << 30], ["MB", 1 << 20], ["KB", 1 << 10]]) {
      if (n >= size) return (n / size).toPrecision(3).replace(/\.?0+$/, "") + " " + unit;
    }
    return n + " bytes";
  }

  function errorText(err) {
    const details = err.body && err.body.details;
    return err.message + (details ? "\n(" + details + ")" : "");
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      if (!url) { resolve(null); return; }
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = reject;
      img.src = url;
    });
  }

  // ------------------------------------------------------------------------------------------- start

  async function init() {
    try {
      info = await api("/api/info");
    } catch (err) {
      $("upload-error").textContent = errorText(err);
      return;
    }
    const model = $("model");
    for (const name of info.models) model.append(el("option", { value: name, text: name }));
    model.value = info.default_model;
    const style = $("style");
    for (const s of info.styles) style.append(el("option", { value: s, text: s }));
    style.value = info.style;
    $("opacity").value = info.opacity;
    $("server-note").textContent = "CellView " + info.version + " · jobs run " + info.runner +
      " · uploads up to " + humanBytes(info.max_upload_bytes);
    setUpViewer();
    setUpUpload();
    setUpControls();
    await loadJobs();
    window.addEventListener("hashchange", route);
    route();
  }

  function setUpViewer() {
    viewer = OpenSeadragon({
      element: $("viewer"), prefixUrl: "/static/vendor/openseadragon/", drawer: "canvas",
      showNavigationControl: false, showNavigator: true, navigatorPosition: "BOTTOM_RIGHT",
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
      gestureSettingsTouch: { clickToZoom: false, dblClickToZoom: true },
      maxZoomPixelRatio: 4, minZoomImageRatio: 0.5, visibilityRatio: 0.5, animationTime: 0.4,
      preserveImageSizeOnResize: true, crossOriginPolicy: false,
    });
    for (const name of ["update-viewport", "open", "resize", "animation"]) viewer.addHandler(name, draw);
    new ResizeObserver(() => {  // the stage changed size (the banner came or went): fit the slide again, unless moved
      if (!job || job.moved || !viewer.world.getItemAt(0)) return;
      const stage = $("stage");
      viewer.viewport.resize(new OpenSeadragon.Point(stage.clientWidth, stage.clientHeight), true);
      viewer.viewport.goHome(true);
      draw();
    }).observe($("stage"));
    for (const name of ["canvas-drag", "canvas-scroll", "canvas-pinch", "canvas-double-click"]) {
      viewer.addHandler(name, () => { if (job) job.moved = true; });
    }
    viewer.addHandler("canvas-click", (event) => {
      if (!event.quick || !job) return;
      event.preventDefaultAction = true;
      const item = viewer.world.getItemAt(0);
      if (!item) return;
      const p = item.viewerElementToImageCoordinates(event.position);
      selectAt(p.x, p.y);
    });
    viewer.addHandler("open-failed", () => { $("run-error").textContent = "The slide could not be shown."; });
  }

  function setUpUpload() {
    const drop = $("drop"), input = $("file"), button = $("analyse");
    const chosen = () => input.files && input.files[0];
    const update = () => {
      const f = chosen();
      $("chosen").textContent = f ? f.name + " (" + humanBytes(f.size) + ")" : "";
      button.disabled = !f;
    };
    input.addEventListener("change", update);
    for (const name of ["dragenter", "dragover"]) {
      drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const name of ["dragleave", "drop"]) {
      drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
    }
    drop.addEventListener("drop", (e) => {
      if (e.dataTransfer && e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        update();
      }
    });
    $("upload-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const f = chosen();
      if (f) upload(f);
    });
  }

  function upload(file) {
    const error = $("upload-error");
    error.textContent = "";
    if (file.size > info.max_upload_bytes) {
      error.textContent = file.name + " is larger than this server accepts (" + humanBytes(info.max_upload_bytes) +
        "); ask whoever runs it to raise --max-upload-mb, or analyse it with `cellview analyze` on the machine.";
      return;
    }
    const form = new FormData();
    form.append("model", $("model").value);
    const mpp = $("mpp").value.trim();
    if (mpp) form.append("mpp", mpp);
    if ($("whole").checked) form.append("whole_image", "1");
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    const bar = $("upload-bar");
    show($("upload-progress"), true);
    $("analyse").disabled = true;
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        bar.value = e.loaded / e.total;
        $("upload-text").textContent = "Uploading " + humanBytes(e.loaded) + " of " + humanBytes(e.total);
      }
    });
    xhr.addEventListener("loadend", () => {
      show($("upload-progress"), false);
      $("analyse").disabled = false;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      if (xhr.status === 202 && body) {
        location.hash = "job=" + body.id;
        loadJobs();
      } else if (xhr.status === 0) {
        error.textContent = "The upload did not reach the server (connection closed).";
      } else {
        const err = new Error((body && body.error) || ("The server answered " + xhr.status + "."));
        err.body = body;
        error.textContent = errorText(err);
      }
    });
    xhr.open("POST", "/api/jobs");
    xhr.send(form);
  }

  function setUpControls() {
    $("style").addEventListener("change", () => refreshOverlay());
    $("anyway").addEventListener("change", () => refreshOverlay());
    $("opacity").addEventListener("input", draw);
    $("show-overlay").addEventListener("change", draw);
    $("cancel").addEventListener("click", async () => {
      if (!job) return;
      try { renderStatus(await api("/api/jobs/" + job.id + "/cancel", { method: "POST" })); }
      catch (err) { $("run-error").textContent = errorText(err); }
    });
    $("remove").addEventListener("click", async () => {
      if (!job) return;
      try { await api("/api/jobs/" + job.id, { method: "DELETE" }); }
      catch (err) { $("run-error").textContent = errorText(err); return; }
      location.hash = "";
      loadJobs();
    });
    $("copy-link").addEventListener("click", () => {
      if (!job) return;
      const link = location.origin + "/#job=" + job.id;
      $("run-note").textContent = "Link to this slide: " + link +
        (info.token_required ? " (whoever opens it needs this server's token too)" : "");
      if (navigator.clipboard) navigator.clipboard.writeText(link).catch(() => {});
    });
  }

  // ------------------------------------------------------------------------------------------- jobs

  async function loadJobs() {
    let body;
    try { body = await api("/api/jobs"); } catch (err) { return; }
    const list = $("job-list");
    clear(list);
    for (const j of body.jobs) {
      const item = el("li", { "data-id": j.id }, el("span", { class: "name", text: j.name }),
        el("span", { class: "state", text: j.state }));
      if (job && j.id === job.id) item.classList.add("current");
      item.addEventListener("click", () => { location.hash = "job=" + j.id; });
      list.append(item);
    }
  }

  function route() {
    const m = /^#job=([A-Za-z0-9_-]{10,64})$/.exec(location.hash);
    if (m) openJob(m[1]);
    else closeJob();
  }

  function closeJob() {
    if (job && job.events) job.events.close();
    job = null;
    if (viewer) viewer.close();
    for (const id of ["run", "call", "legend", "display", "inspector", "downloads", "banner"]) show($(id), false);
    show($("empty"), true);
    draw();
    loadJobs();
  }

  async function openJob(id) {
    if (job && job.id === id) return;
    if (job && job.events) job.events.close();
    job = { id: id, status: null, overlay: null, fill: null, hatch: null, selected: null, events: null,
            fetching: false, again: false, wanted: -1 };
    for (const name of ["call", "legend", "inspector", "downloads", "banner"]) show($(name), false);
    $("run-error").textContent = "";
    $("run-note").textContent = "";
    let status;
    try {
      status = await api("/api/jobs/" + id);
    } catch (err) {
      show($("run"), true);
      $("slide-name").textContent = "";
      $("run-text").textContent = "";
      $("run-error").textContent = errorText(err);
      return;
    }
    if (!job || job.id !== id) return;
    show($("empty"), false);
    show($("display"), true);
    renderStatus(status);
    if (status.state !== "failed") viewer.open(status.urls.dzi);
    if (!["done", "cancelled", "failed"].includes(status.state)) follow(status.urls.events);
    for (const li of $("job-list").children) li.classList.toggle("current", li.dataset.id === id);
  }

  function follow(url) {
    const source = new EventSource(url);
    const mine = job;
    mine.events = source;
    source.addEventListener("status", (e) => { if (job === mine) renderStatus(JSON.parse(e.data)); });
    source.addEventListener("end", () => { source.close(); loadJobs(); });
  }

  function renderStatus(s) {
    if (!job || s.id !== job.id) return;
    const before = job.status;
    job.status = s;
    show($("run"), true);
    $("slide-name").textContent = s.name;
    const p = s.progress;
    $("run-bar").value = p.total ? p.done / p.total : (s.state === "done" ? 1 : 0);
    $("run-text").textContent = p.text + (s.model ? "  Model: " + s.model + (s.provider ? " on " + s.provider : "") + "." : "");
    $("run-error").textContent = s.state === "failed" ? s.error + (s.details ? "\n(" + s.details + ")" : "") :
      (s.state === "cancelled" && s.error ? s.error : "");
    const active = ["queued", "running", "receiving"].includes(s.state);
    $("cancel").disabled = !active;
    if (s.note) $("run-note").textContent = s.note;
    document.body.dataset.jobState = s.state;
    if (s.outputs) renderDownloads(s.outputs);
    if (s.state === "failed") {
      show($("call"), false); show($("legend"), false); show($("banner"), false);
      if (viewer) viewer.close();
      draw();
    } else if (p.total > 0 || ["done", "cancelled"].includes(s.state)) {
      if (!before || before.version !== s.version) refreshOverlay();
    }
    if (before && before.state !== s.state) loadJobs();
  }

  function renderDownloads(outputs) {
    const list = $("download-list");
    clear(list);
    for (const [kind, o] of Object.entries(outputs)) {
      list.append(el("li", {}, el("a", { href: o.url, download: "", "data-kind": kind, text: o.label })));
    }
    show($("downloads"), true);
  }

  // ------------------------------------------------------------------------------------------- the overlay

  async function refreshOverlay() {
    if (!job) return;
    if (job.fetching) { job.again = true; return; }
    const mine = job;
    mine.fetching = true;
    try {
      const q = "?style=" + encodeURIComponent($("style").value) + "&anyway=" + ($("anyway").checked ? 1 : 0);
      const ov = await api("/api/jobs/" + mine.id + "/overlay" + q);
      const [fill, hatch] = await Promise.all([loadImage(ov.fill), loadImage(ov.hatch)]);
      if (job !== mine) return;
      mine.overlay = ov; mine.fill = fill; mine.hatch = hatch;
      renderReadouts(ov);
      if (mine.selected && !mine.selected.done) selectIndex(mine.selected.index);
      draw();
    } catch (err) {
      if (err.status !== 409 && job === mine) $("run-error").textContent = errorText(err);
    } finally {
      mine.fetching = false;
      if (mine.again && job === mine) {
        mine.again = false;
        setTimeout(refreshOverlay, 250);
      }
    }
  }

  function hatchPattern(ctx) {
    const h = info.hatch, n = h.spacing_px;
    const tile = document.createElement("canvas");
    tile.width = tile.height = n;
    const g = tile.getContext("2d");
    const img = g.createImageData(n, n);
    for (let y = 0; y < n; y++) {
      for (let x = 0; x < n; x++) {
        const d = (x + y) % n, i = 4 * (y * n + x);
        const line = d < h.width_px;
        const casing = !line && (d < h.width_px + 1 || d === n - 1);
        const rgb = line ? h.rgb : h.casing_rgb;
        if (line || casing) {
          img.data[i] = rgb[0]; img.data[i + 1] = rgb[1]; img.data[i + 2] = rgb[2];
          img.data[i + 3] = line ? h.alpha[1] : h.alpha[0];
        }
      }
    }
    g.putImageData(img, 0, 0);
    return ctx.createPattern(tile, "repeat");
  }

  function draw() {
    const canvas = $("overlay");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const item = viewer && viewer.world.getItemAt(0);
    const ov = job && job.overlay;
    if (!item || !ov || !$("show-overlay").checked) { canvas.dataset.drawn = "0"; return; }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const [W, H] = ov.grid.slide_l0, [sx, sy] = ov.grid.stride_l0;
    const p0 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const p1 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(W, H));
    const k = (p1.x - p0.x) / W;
    const cellsW = ov.grid.cols * sx * k, cellsH = ov.grid.rows * sy * k;
    ctx.save();
    ctx.beginPath();
    ctx.rect(p0.x, p0.y, p1.x - p0.x, p1.y - p0.y);
    ctx.clip();
    ctx.imageSmoothingEnabled = false;
    if (job.fill) {
      ctx.globalAlpha = Number($("opacity").value);
      ctx.drawImage(job.fill, p0.x, p0.y, cellsW, cellsH);
      ctx.globalAlpha = 1;
    }
    if (job.hatch) {
      offscreen.width = canvas.width; offscreen.height = canvas.height;
      const off = offscreen.getContext("2d");
      off.setTransform(dpr, 0, 0, dpr, 0, 0);
      if (!pattern) pattern = hatchPattern(off);
      off.fillStyle = pattern;
      off.fillRect(0, 0, w, h);
      off.globalCompositeOperation = "destination-in";
      off.imageSmoothingEnabled = false;
      off.drawImage(job.hatch, p0.x, p0.y, cellsW, cellsH);
      off.globalCompositeOperation = "source-over";
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.drawImage(offscreen, 0, 0);
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    }
    const casing = "rgb(" + info.casing_rgb.join(",") + ")";
    for (const c of ov.contours) {
      ctx.beginPath();
      const s = c.segments;
      for (let i = 0; i < s.length; i += 4) {
        ctx.moveTo(p0.x + s[i] * k, p0.y + s[i + 1] * k);
        ctx.lineTo(p0.x + s[i + 2] * k, p0.y + s[i + 3] * k);
      }
      ctx.strokeStyle = casing; ctx.lineWidth = 3; ctx.stroke();
      ctx.strokeStyle = c.color; ctx.lineWidth = 1.5; ctx.stroke();
    }
    ctx.restore();
    const sel = job.selected;
    if (sel) {
      const [x, y, tw, th] = sel.rect_l0;
      ctx.lineWidth = 3; ctx.strokeStyle = "#000";
      ctx.strokeRect(p0.x + x * k, p0.y + y * k, tw * k, th * k);
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff";
      ctx.strokeRect(p0.x + x * k, p0.y + y * k, tw * k, th * k);
    }
    draws += 1;
    canvas.dataset.drawn = String(draws);
    canvas.dataset.version = String(ov.version);
    canvas.dataset.hatched = job.hatch ? "1" : "0";
  }

  // ------------------------------------------------------------------------------------------- readouts

  function renderReadouts(ov) {
    const ended = ["done", "cancelled"].includes(ov.state);
    const words = $("call-words");
    clear(words);
    const headline = el("div", { class: "headline", text: (ended ? "" : "So far: ") + ov.call.headline });
    if (info.categories.some((c) => c.name === ov.call.category)) headline.style.color = ov.call.color;
    else headline.classList.add("no-call");  // the legend's grey is for paper; on this dark page a light one
    words.append(headline);
    if (ov.call.evidence) words.append(el("div", { class: "evidence", text: ov.call.evidence }));
    if (ov.call.reading) words.append(el("div", { class: "hint", text: ov.call.reading }));
    words.dataset.category = ov.call.category;
    show($("call"), true);

    const d = ov.domain;
    show($("banner"), d.banner || ov.show_anyway);
    $("banner-headline").textContent = d.banner ? d.headline : "";
    $("banner-detail").textContent = d.banner ? d.detail : (ov.show_anyway ? d.detail : "");
    $("anyway").checked = ov.show_anyway;

    const lg = ov.legend;
    const lines = (node, items) => {
      clear(node);
      for (const line of items) node.append(el("div", { class: "line-" + line.kind, text: line.text }));
    };
    lines($("legend-header"), lg.header);
    $("legend-counted").textContent = lg.counted;
    const table = $("legend-rows");
    clear(table);
    for (const r of lg.rows.concat(lg.classes)) {
      const sw = el("span", { class: "swatch" + (r.swatch === "hatch" ? " hatch" : "") });
      if (r.swatch !== "hatch") sw.style.background = r.swatch;
      const row = el("tr", { "data-key": r.key }, el("td", {}, sw), el("td", { text: r.label + (r.hidden ? " (hidden)" : "") }),
        el("td", { class: "n", text: r.count.toLocaleString() }), el("td", { class: "n", text: r.percent + "%" }));
      table.append(row);
    }
    lines($("legend-notes"), lg.notes);
    lines($("legend-footer"), lg.footer);
    show($("legend"), true);
  }

  async function selectAt(x, y) {
    try {
      const t = await api("/api/jobs/" + job.id + "/tile?x=" + x.toFixed(1) + "&y=" + y.toFixed(1));
      renderTile(t);
    } catch (err) {
      show($("inspector"), true);
      $("tile-title").textContent = "No tile";
      $("tile-subtitle").textContent = err.message;
      clear($("tile-bars"));
      $("tile-lines").textContent = "";
      $("patch").removeAttribute("src");
      job.selected = null;
      draw();
    }
  }

  async function selectIndex(index) {
    try { renderTile(await api("/api/jobs/" + job.id + "/tile?index=" + index)); } catch (err) { /* gone */ }
  }

  function bar(name, color, p, text, top) {
    const fill = el("div", { class: "fill" });
    fill.style.width = (100 * (p || 0)).toFixed(1) + "%";
    fill.style.background = color;
    return el("div", { class: "bar" + (top ? " top" : "") },
      el("div", { class: "track" }, fill, el("span", { class: "label", text: name })),
      el("span", { class: "value", text: text }));
  }

  function renderTile(t) {
    job.selected = t;
    show($("inspector"), true);
    const title = $("tile-title");
    clear(title);
    const sub = $("tile-subtitle");
    clear(sub);
    if (t.done) {
      const sw = el("span", { class: "swatch" });
      sw.style.background = t.class_color;
      title.append(sw, " " + t.class);
      sub.append(el("div", { text: "Category " + t.category + " · confidence " + t.confidence_text }));
      if (t.out_of_domain) sub.append(el("div", { class: "line-warning", text: "Out of the model's domain" }));
    } else {
      title.textContent = t.state_text;
      if (t.error) sub.append(el("div", { text: t.error }));
    }
    const bars = $("tile-bars");
    clear(bars);
    if (t.categories) {
      for (const c of t.categories) bars.append(bar(c.name, c.color, c.p, c.text, c.name === t.category));
      bars.append(el("div", { class: "hint", text: "Classes" }));
    }
    for (const c of t.classes) bars.append(bar(c.name, c.color, c.p, c.text, c.name === t.class));
    $("tile-lines").textContent = t.lines.join("\n");
    $("patch").src = t.patch_url;
    $("inspector").dataset.index = String(t.index);
    draw();
  }

  // For scripts and tests: what is shown, and where a level-0 point of the slide is drawn in the viewer.
  window.cellview = {
    state: () => ({ job: job && job.id, state: job && job.status && job.status.state,
                    overlay: job && job.overlay && job.overlay.version, draws: draws,
                    hatched: !!(job && job.hatch), selected: job && job.selected ? job.selected.index : null }),
    toViewer: (x, y) => {
      const item = viewer && viewer.world.getItemAt(0);
      if (!item) return null;
      const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
      return [p.x, p.y];
    },
  };
  document.addEventListener("DOMContentLoaded", init);
})();
