// autosink labeler: plain JavaScript, no build step, no third-party code.
// Views: #/ (episode list) and #/episode/<name> (timeline of one episode).
"use strict";

(() => {
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const EPISODE_RE = /^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$/;
  const $ = (id) => document.getElementById(id);
  const NAMES = { "1": "on", "0": "off", "-1": "ignore" };
  const SHORT = { "1": "1", "0": "0", "-1": "×" };
  const CLS = { "1": "v1", "0": "v0", "-1": "vx" };

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  let statusTimer = null;
  function status(text, kind = "") {
    const s = $("status");
    s.textContent = text;
    s.className = "status " + kind;
    clearTimeout(statusTimer);
    if (kind === "ok") statusTimer = setTimeout(() => { s.textContent = ""; s.className = "status"; }, 4000);
  }

  function banner(text, actions = [], kind = "warn") {
    $("banner-text").textContent = text;
    const box = $("banner-actions");
    box.replaceChildren(...actions.map(([label, fn]) => {
      const b = el("button", { type: "button", text: label });
      b.addEventListener("click", fn);
      return b;
    }));
    $("banner").className = "banner " + kind;
    $("banner").hidden = false;
  }
  function hideBanner() { $("banner").hidden = true; }

  async function api(path, options = {}) {
    const headers = { "Accept": "application/json", ...(options.headers || {}) };
    if (options.method === "POST") {
      headers["Content-Type"] = "application/json";
      headers["X-Autosink-CSRF"] = CSRF;
    }
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options, headers });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (r.status === 401) {
      banner("This labeler needs its access token: open the URL printed by `autosink label serve` " +
             "(http://HOST:PORT/?token=...).", [], "error");
    }
    return { status: r.status, ok: r.ok, body };
  }

  function when(iso) {
    if (!iso) return "never";
    const d = new Date(iso);
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  }

  // ------------------------------------------------------------------ episode list

  let listCache = [];

  async function showList() {
    $("episode-view").hidden = true;
    $("list-view").hidden = false;
    $("crumbs").replaceChildren();
    document.title = "autosink labeler";
    const r = await api("/api/episodes");
    if (!r.ok) { status((r.body && r.body.error) || `error ${r.status}`, "error"); return; }
    listCache = r.body.episodes;
    renderList();
  }

  function renderList() {
    const only = $("only-pending").checked;
    const rows = listCache.filter((e) => !only || e.review > e.reviewed);
    const total = listCache.reduce((a, e) => ({ review: a.review + e.review, reviewed: a.reviewed + e.reviewed,
                                               frames: a.frames + e.frames }), { review: 0, reviewed: 0, frames: 0 });
    $("list-summary").textContent = `${listCache.length} episodes · ${total.frames} frames · ` +
      `${total.reviewed} of ${total.review} review frames labelled by a human`;
    $("episode-rows").replaceChildren(...rows.map((e) => {
      const pct = e.review ? Math.round(100 * e.reviewed / e.review) : 100;
      const fill = el("span", { class: "fill" });
      fill.style.width = `${pct}%`;  // CSSOM, not a style attribute: the CSP forbids inline styles
      const bar = el("span", { class: "bar" }, fill);
      const progress = el("td", {}, el("span", { class: "progress" }, bar, el("span", { text: `${e.reviewed}/${e.review}` })));
      const store = { current: ["up to date", "ok"], stale: ["run dvc repro", "warn"],
                      missing: ["not built", "muted"] }[e.store] || [e.store, ""];
      const tr = el("tr", { tabindex: "0", "data-episode": e.episode, class: e.review > e.reviewed ? "pending" : "" },
        el("td", {}, el("a", { href: `#/episode/${e.episode}`, text: e.episode })),
        el("td", { text: e.user_id }),
        el("td", { class: "num", text: String(e.frames) }),
        el("td", { class: "num", text: String(e.review - e.reviewed) }),
        progress,
        el("td", { class: "num", text: String(e.human) }),
        el("td", { text: savedText(e), class: e.error || e.labels_check === "mismatch" ? "labels-bad" : "",
                   title: e.warning || e.error || "" }),
        el("td", {}, el("span", { class: "pill " + store[1], text: store[0] })));
      tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = `#/episode/${e.episode}`; });
      tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") location.hash = `#/episode/${e.episode}`; });
      return tr;
    }));
  }

  $("only-pending").addEventListener("change", renderList);

  function savedText(e) {
    if (e.error) return "unreadable: " + e.error;
    if (e.labels_check === "mismatch") return "labels for another file of this episode: not applied";
    if (e.labels_check === "unverified") return `${when(e.saved_at)} (unverified: older file)`;
    return when(e.saved_at);
  }

  // ------------------------------------------------------------------ episode view state

  const S = {
    ep: null, frames: [], version: "none", saved: new Map(), work: new Map(), base: new Map(),
    cur: 0, anchor: null, dragging: false, cells: [], mini: [], store: "", check: "none",
  };
  // The labels file needs a save even without changes: it holds labels for another file of this
  // episode (saving replaces them), or it records no episode sha256 (saving records it).
  const needsSave = () => S.check === "mismatch" || S.check === "unverified";

  const label = (i) => (S.work.has(i) ? S.work.get(i) : S.frames[i].auto_label);
  const pending = (i) => S.frames[i].review && !S.work.has(i);
  const range = () => {
    if (S.anchor === null) return [S.cur, S.cur];
    return [Math.min(S.anchor, S.cur), Math.max(S.anchor, S.cur)];
  };

  function changes() {
    let n = 0;
    const keys = new Set([...S.saved.keys(), ...S.work.keys()]);
    for (const k of keys) if (S.saved.get(k) !== S.work.get(k)) n++;
    return n;
  }

  async function showEpisode(name) {
    if (!EPISODE_RE.test(name)) { location.hash = "#/"; return; }
    $("list-view").hidden = true;
    $("episode-view").hidden = false;
    hideBanner();
    const r = await api(`/api/episodes/${name}`);
    if (!r.ok) {
      status((r.body && r.body.error) || `error ${r.status}`, "error");
      if (r.status === 404) location.hash = "#/";
      return;
    }
    load(r.body, null);
    const first = S.frames.findIndex((_, i) => pending(i));
    S.cur = first >= 0 ? first : 0;
    S.anchor = null;
    buildStrip();
    paint();
    warnLabels(r.body);
    $("strip").focus({ preventScroll: true });
  }

  function warnLabels(body) {  // labels not loaded (another file of the episode) or loaded unchecked
    if (!body.warning) return;
    banner(`${S.ep}: ${body.warning}.`, [["Dismiss", hideBanner]],
           body.labels_check === "mismatch" ? "error" : "warn");
  }

  function load(body, reapply) {
    S.ep = body.episode;
    S.frames = body.frames;
    S.version = body.version;
    S.store = body.store;
    S.check = body.labels_check;
    // Maps are keyed by position in S.frames; the API speaks frame_index.
    const pos = new Map(S.frames.map((f, i) => [f.index, i]));
    S.saved = new Map(Object.entries(body.labels).filter(([k]) => pos.has(Number(k)))
      .map(([k, v]) => [pos.get(Number(k)), v]));
    S.base = new Map(S.saved);
    S.work = new Map(S.saved);
    if (reapply) {  // my edits (relative to what I had loaded) on top of the newer file
      for (const [i, v] of reapply) { if (v === null) S.work.delete(i); else S.work.set(i, v); }
    }
    document.title = `${S.ep} · autosink labeler`;
    $("crumbs").replaceChildren(el("a", { href: "#/", text: "Episodes" }), el("span", { text: " / " + S.ep }));
    $("ep-name").textContent = S.ep;
    const f0 = S.frames[0];
    $("ep-meta").textContent = f0 ? `${f0.timestamp.replace("T", " ")} · ${S.frames.length} frames` : "no frames";
  }

  function myEdits() {  // what I changed since load: index -> label (null = removed)
    const out = new Map();
    const keys = new Set([...S.base.keys(), ...S.work.keys()]);
    for (const k of keys) if (S.base.get(k) !== S.work.get(k)) out.set(k, S.work.has(k) ? S.work.get(k) : null);
    return out;
  }

  // ------------------------------------------------------------------ rendering

  function thumbUrl(f) { return `/img/${S.ep}/thumb/${f.image}`; }
  function frameUrl(f) { return `/img/${S.ep}/frame/${f.image}`; }

  function lane(kind, v, extra = "") {
    const cls = v === null || v === undefined ? "none" : CLS[String(v)];
    return el("div", { class: `lane ${kind} ${cls} ${extra}`, text: v === null || v === undefined ? "·" : SHORT[String(v)] });
  }

  function buildStrip() {
    const strip = $("strip");
    S.cells = S.frames.map((f, i) => {
      const img = el("img", { loading: "lazy", decoding: "async", alt: `frame ${f.index}`, src: thumbUrl(f),
                              draggable: "false" });
      const cell = el("div", { class: "cell", "data-i": String(i) },
        el("div", { class: "thumb" }, img, el("span", { class: "idx", text: String(f.index) }), el("span", { class: "flag" })),
        lane("m", f.model_output), lane("s", f.magnetic_status), lane("a", f.auto_label, f.review ? "low" : ""),
        lane("h", null));
      cell.addEventListener("mousedown", (ev) => {
        ev.preventDefault();
        if (ev.shiftKey) { if (S.anchor === null) S.anchor = S.cur; } else S.anchor = i;
        S.cur = i;
        S.dragging = true;
        paint();
      });
      cell.addEventListener("mouseenter", () => { if (S.dragging && S.cur !== i) { S.cur = i; paint(); } });
      return cell;
    });
    strip.replaceChildren(...S.cells);
    S.mini = S.frames.map((f, i) => {
      const m = el("div", { class: "mini", title: `frame ${f.index}` });
      m.addEventListener("mousedown", (ev) => { ev.preventDefault(); S.cur = i; S.anchor = null; paint(); });
      return m;
    });
    $("minimap").replaceChildren(...S.mini);
  }

  window.addEventListener("mouseup", () => {
    if (!S.dragging) return;
    S.dragging = false;
    if (S.anchor === S.cur) S.anchor = null;
    paint();
  });

  function paintCell(i, lo, hi) {
    const f = S.frames[i];
    const cell = S.cells[i];
    const h = S.work.has(i) ? S.work.get(i) : null;
    const hl = cell.children[4];
    const unsaved = S.saved.get(i) !== S.work.get(i);
    hl.className = `lane h ${h === null ? "none" : CLS[String(h)]}${unsaved ? " unsaved" : ""}`;
    hl.textContent = h === null ? "·" : SHORT[String(h)];
    cell.classList.toggle("sel", S.anchor !== null && i >= lo && i <= hi);
    cell.classList.toggle("cur", i === S.cur);
    cell.classList.toggle("pending", pending(i));
    cell.classList.toggle("done", f.review && S.work.has(i));
    const m = S.mini[i];
    m.className = `mini ${CLS[String(label(i))]}${pending(i) ? " pending" : ""}${i >= lo && i <= hi ? " sel" : ""}` +
                  `${i === S.cur ? " cur" : ""}`;
  }

  function paint() {
    if (!S.frames.length) return;
    const [lo, hi] = range();
    for (let i = 0; i < S.frames.length; i++) paintCell(i, lo, hi);
    const f = S.frames[S.cur];
    const img = $("frame");
    const url = frameUrl(f);
    if (img.getAttribute("src") !== url) img.src = url;
    prefetch();
    S.cells[S.cur].scrollIntoView({ block: "nearest", inline: "nearest" });

    $("cur-title").textContent = `Frame ${f.index}  (${S.cur + 1} of ${S.frames.length})`;
    const h = S.work.has(S.cur) ? S.work.get(S.cur) : null;
    const saved = S.saved.has(S.cur) ? S.saved.get(S.cur) : null;
    const rows = [
      ["image", `${f.image} · ${f.timestamp.slice(11)}`],
      ["model output", NAMES[f.model_output]],
      ["faucet", NAMES[f.magnetic_status]],
      ["automatic", `${NAMES[f.auto_label]} · conf ${f.confidence.toFixed(2)} · ${f.rule}`],
      ["review", f.review ? (h === null ? "needs review" : "reviewed") : "no"],
      ["human", h === null ? "—" : NAMES[h] + (h !== saved ? " (unsaved)" : "")],
      ["label used", NAMES[label(S.cur)]],
    ];
    $("cur-details").replaceChildren(...rows.flatMap(([k, v]) =>
      [el("dt", { text: k }), el("dd", { text: v, class: k === "review" && v === "needs review" ? "warn" : "" })]));
    $("frame-badges").replaceChildren(
      el("span", { class: `badge ${CLS[f.model_output]}`, text: `model ${NAMES[f.model_output]}` }),
      el("span", { class: `badge ${CLS[f.magnetic_status]}`, text: `faucet ${NAMES[f.magnetic_status]}` }),
      el("span", { class: `badge ${CLS[String(label(S.cur))]}`, text: `label ${NAMES[label(S.cur)]}` }));
    const left = S.frames.filter((_, i) => pending(i)).length;
    $("selection").textContent = S.anchor === null
      ? `${left} frame${left === 1 ? "" : "s"} left to review. Shift+arrows or drag to select a stretch.`
      : `Frames ${S.frames[lo].index}–${S.frames[hi].index} selected (${hi - lo + 1}). ${left} left to review.`;
    const n = changes();
    $("dirty").hidden = n === 0;
    $("dirty").textContent = `● ${n} unsaved change${n === 1 ? "" : "s"}`;
    $("save-btn").classList.toggle("attention", n > 0 || needsSave());
  }

  const prefetched = new Map();
  function prefetch() {
    for (let d = 1; d <= 3; d++) {
      for (const i of [S.cur + d, S.cur - d]) {
        if (i < 0 || i >= S.frames.length) continue;
        const url = frameUrl(S.frames[i]);
        if (prefetched.has(url)) continue;
        const im = new Image();
        im.src = url;
        prefetched.set(url, im);
        if (prefetched.size > 64) prefetched.delete(prefetched.keys().next().value);
      }
    }
  }

  // ------------------------------------------------------------------ actions

  function setLabels(value) {  // value: 0, 1, -1, "auto" or null (clear)
    const [lo, hi] = range();
    for (let i = lo; i <= hi; i++) {
      if (value === null) S.work.delete(i);
      else S.work.set(i, value === "auto" ? S.frames[i].auto_label : value);
    }
    if (S.anchor === null && value !== null && S.cur < S.frames.length - 1) S.cur++;  // one frame: move on
    paint();
  }

  function move(delta, extend) {
    if (extend) { if (S.anchor === null) S.anchor = S.cur; } else S.anchor = null;
    S.cur = Math.max(0, Math.min(S.frames.length - 1, S.cur + delta));
    paint();
  }

  function nextPending(dir) {
    const n = S.frames.length;
    for (let k = 1; k <= n; k++) {
      const i = (S.cur + dir * k + n * k) % n;
      if (pending(i)) { S.cur = i; S.anchor = null; paint(); return; }
    }
    status("No frame left to review in this episode", "ok");
  }

  async function save() {
    if (!S.ep) return;
    if (changes() === 0 && !needsSave()) { status("Nothing to save", "ok"); return; }
    const labels = {};
    for (const [k, v] of [...S.work.entries()].sort((a, b) => a[0] - b[0])) labels[String(S.frames[k].index)] = v;
    status("Saving…");
    const r = await api(`/api/episodes/${S.ep}/labels`, { method: "POST", body: JSON.stringify({ version: S.version, labels }) });
    if (r.status === 409) {
      status("Not saved: conflict", "error");
      const mine = myEdits();
      banner(`Not saved: the labels of ${S.ep} were saved elsewhere (another tab or person) after you opened it. ` +
             `Nothing was overwritten; your ${mine.size} change${mine.size === 1 ? " is" : "s are"} still here.`, [
        ["Reload and re-apply my changes", () => reload(mine)],
        ["Reload (discard my changes)", () => reload(null)],
        ["Dismiss", hideBanner],
      ], "error");
      return;
    }
    if (!r.ok) {
      status(`Not saved: ${(r.body && r.body.error) || "error " + r.status}`, "error");
      return;
    }
    S.version = r.body.version;
    S.store = r.body.store;
    S.check = r.body.labels_check;
    S.saved = new Map(S.work);
    S.base = new Map(S.work);
    hideBanner();
    paint();
    status(`Saved ${r.body.labels} labels at ${when(r.body.saved_at)}` +
           (r.body.store === "current" ? "" : " · run dvc repro to rebuild the feature store"), "ok");
  }

  async function reload(reapply) {
    const r = await api(`/api/episodes/${S.ep}`);
    if (!r.ok) { status((r.body && r.body.error) || `error ${r.status}`, "error"); return; }
    const cur = S.cur;
    load(r.body, reapply);
    S.cur = Math.min(cur, S.frames.length - 1);
    S.anchor = null;
    buildStrip();
    paint();
    hideBanner();
    warnLabels(r.body);
    status(reapply ? "Reloaded; your changes are re-applied (not saved yet)" : "Reloaded", "ok");
  }

  const ACTIONS = {
    label0: () => setLabels(0), label1: () => setLabels(1), labelx: () => setLabels(-1),
    accept: () => setLabels("auto"), clear: () => setLabels(null), next: () => nextPending(1), save,
  };
  for (const b of document.querySelectorAll("[data-act]")) {
    b.addEventListener("click", () => { ACTIONS[b.dataset.act](); b.blur(); });
  }

  document.addEventListener("keydown", (ev) => {
    if ($("episode-view").hidden || !S.frames.length) return;
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLTextAreaElement) return;
    if ((ev.ctrlKey || ev.metaKey) && (ev.key === "s" || ev.key === "S")) { ev.preventDefault(); save(); return; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const page = Math.max(1, Math.floor($("strip").clientWidth / 104));
    const keys = {
      ArrowRight: () => move(1, ev.shiftKey), ArrowLeft: () => move(-1, ev.shiftKey),
      PageDown: () => move(page, ev.shiftKey), PageUp: () => move(-page, ev.shiftKey),
      Home: () => move(-S.frames.length, ev.shiftKey), End: () => move(S.frames.length, ev.shiftKey),
      "0": ACTIONS.label0, "1": ACTIONS.label1, x: ACTIONS.labelx, X: ACTIONS.labelx,
      a: ACTIONS.accept, Delete: ACTIONS.clear, Backspace: ACTIONS.clear,
      n: () => nextPending(1), N: () => nextPending(-1), p: () => nextPending(-1),
      s: save, Escape: () => { S.anchor = null; paint(); },
    };
    const fn = keys[ev.key];
    if (fn) { ev.preventDefault(); fn(); }
  });

  window.addEventListener("beforeunload", (ev) => {
    if (S.ep && !$("episode-view").hidden && changes() > 0) { ev.preventDefault(); ev.returnValue = ""; }
  });

  // ------------------------------------------------------------------ routing

  let lastHash = null;
  function route() {
    const h = location.hash || "#/";
    if (S.ep && !$("episode-view").hidden && lastHash && h !== lastHash && changes() > 0 &&
        !confirm(`${S.ep} has ${changes()} unsaved changes. Leave without saving?`)) {
      history.replaceState(null, "", lastHash);
      return;
    }
    lastHash = h;
    const m = h.match(/^#\/episode\/([^/]+)$/);
    if (m) showEpisode(decodeURIComponent(m[1]));
    else { S.ep = null; S.frames = []; showList(); }
  }
  window.addEventListener("hashchange", route);
  route();
})();
