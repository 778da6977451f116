// The search page: plain JS over the JSON API. Its state lives in the URL (?q=, to=, like=, file=,
// the filters, item= for the open detail view), so every view can be linked and reloaded, and each
// view maps to one API call: /search, /items/{id}/similar, POST /search with a file, or /browse.

const $ = (id) => document.getElementById(id);
const form = $("search"), input = $("q"), fileInput = $("file"), grid = $("results");
const statusLine = $("status"), more = $("more"), empty = $("empty"), dropzone = $("dropzone");
const chip = $("query-chip"), chipLabel = $("query-label"), chipPreview = $("query-preview");
const dialog = $("detail");
const PAGE = 24;
const DEDUP = 0.95;  // "collapse duplicates": results within this cosine of a better one are dropped
const FILTERS = { path: $("f-path"), date_from: $("f-from"), date_to: $("f-to"), camera: $("f-camera"),
                  min_score: $("f-min"), dedup: $("f-dedup") };
const URL_KEYS = { path: "path", date_from: "from", date_to: "until", camera: "camera", min_score: "min", dedup: "dedup" };
const PLACEHOLDER = input.placeholder;

const state = { q: "", to: "", like: null, likeLabel: "", file: null, fileKey: null, item: null,
                filters: {}, offset: 0, next: null, total: null };
let hits = [];  // the results shown, in grid order
let roots = [];  // catalog roots, longest first: paths are shown relative to theirs
let counts = {};  // items by modality
let inflight = null, loading = false, detailIndex = null, lastFocus = null, detailToken = 0;
let afterClose = null;  // where focus goes when the detail view closes (null: the card it came from)

// -- files, kinds, formatting -------------------------------------------------------------------

const IMAGE_EXT = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif"];
const AUDIO_EXT = ["wav", "flac", "ogg", "oga", "mp3", "m4a", "opus"];
const VIDEO_EXT = ["mp4", "mov", "m4v", "mkv", "webm", "avi"];

function kindOf(file) {
  if (file.type.startsWith("image/")) return "image";
  if (file.type.startsWith("audio/")) return "audio";
  if (file.type.startsWith("video/")) return "video";
  const ext = file.name.split(".").pop().toLowerCase();
  if (IMAGE_EXT.includes(ext)) return "image";
  if (AUDIO_EXT.includes(ext)) return "audio";
  if (VIDEO_EXT.includes(ext)) return "video";
  return null;
}

const isPicture = (path) => !!path && kindOf({ type: "", name: path }) === "image";

function seconds(s) { return `${s.toFixed(1)} s`; }

// m:ss, or m:ss.s where tenths are asked for (by default: where the time has them). Rounded first,
// so 59.97 s reads 1:00.0, not 0:60.0.
function clock(s, tenths = Math.round(s * 10) % 10 !== 0) {
  const t = tenths ? Math.round(s * 10) : Math.round(s) * 10;  // in tenths of a second
  const m = Math.floor(t / 600), r = (t - m * 600) / 10;
  return `${m}:${r < 10 ? "0" : ""}${r.toFixed(tenths ? 1 : 0)}`;
}

// a matched span, start and end alike and always in tenths (as a sound's are): "0:00.0–0:02.0"
function clockSpan(start, end) { return `${clock(start, true)}–${clock(end, true)}`; }

function bytes(n) {
  if (n == null) return null;
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

function when(iso) {  // as the file says it: no time-zone shift
  return iso ? iso.slice(0, 16).replace("T", " ") : null;
}

function camera(h) {
  const make = h.camera_make || "", model = h.camera_model || "";
  if (!make) return model || null;
  return model.toLowerCase().startsWith(make.toLowerCase()) ? model : `${make} ${model}`.trim();
}

function splitPath(path) {
  const root = roots.find((r) => path.startsWith(r + "/"));
  const rel = root ? path.slice(root.length + 1) : path;
  const i = rel.lastIndexOf("/");
  return [rel.slice(0, i + 1), rel.slice(i + 1)];
}

const nameOf = (h) => splitPath(h.ref_path && h.modality === "text" ? h.ref_path : h.path)[1];

function detailOf(data, res) {  // {"detail": "..."}, field errors, or RFC 9457 problem details
  const d = data && data.detail;
  if (typeof d === "string" && d) return d;
  if (Array.isArray(d) && d.length) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  if (data && typeof data.title === "string" && data.title) return data.title;
  return `${res.status} ${res.statusText}`;
}

async function getJSON(url, init = {}) {
  const res = await fetch(url, { ...init, headers: { accept: "application/json" } });
  let data = null;
  try { data = await res.json(); } catch { /* not JSON: the status says it */ }
  if (!res.ok) {
    const err = new Error(detailOf(data, res));
    err.status = res.status;
    throw err;
  }
  return data;
}

// -- files kept for links (?file=KEY): the dropped file stays in this browser ---------------------

function store(mode) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("mmsearch", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("files");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => resolve(open.result.transaction("files", mode).objectStore("files"));
  });
}

function done(req) {
  return new Promise((resolve, reject) => { req.onsuccess = () => resolve(req.result); req.onerror = () => reject(req.error); });
}

async function saveFile(file) {
  const key = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
  try {
    const files = await store("readwrite");
    const keys = await done(files.getAllKeys());
    const old = (await done(files.getAll())).map((v, i) => [v.at, keys[i]]).sort((a, b) => b[0] - a[0]);
    for (const [, k] of old.slice(9)) files.delete(k);  // keep the last ten
    await done(files.put({ at: Date.now(), name: file.name, type: file.type, blob: file }, key));
    return key;
  } catch {
    return null;  // private mode or no IndexedDB: the query works, the link will not
  }
}

async function loadFile(key) {
  try {
    const v = await done((await store("readonly")).get(key));
    return v ? new File([v.blob], v.name, { type: v.type }) : null;
  } catch {
    return null;
  }
}

// -- state <-> URL --------------------------------------------------------------------------------

function currentTo() { return form.querySelector("input[name=to]:checked").value; }

function setTo(value) {
  const radio = form.querySelector(`input[name=to][value="${CSS.escape(value || "")}"]`);
  (radio || form.querySelector("input[name=to][value='']")).checked = true;
}

function readFilters() {
  const f = {};
  for (const [k, el] of Object.entries(FILTERS)) {
    const v = el.type === "checkbox" ? el.checked : el.value.trim();
    if (v) f[k] = v;
  }
  return f;
}

function writeFilters(f) {
  for (const [k, el] of Object.entries(FILTERS)) {
    if (el.type === "checkbox") el.checked = !!f[k]; else el.value = f[k] || "";
  }
  const n = Object.keys(f).length;
  $("filter-count").textContent = n;
  $("filter-count").hidden = !n;
  $("filters-toggle").setAttribute("aria-label", n ? `Filters, ${n} set` : "Filters");
}

function urlFor() {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  if (state.file && state.fileKey) p.set("file", state.fileKey);
  if (state.like) p.set("like", state.like);
  if (state.to) p.set("to", state.to);
  for (const [k, v] of Object.entries(state.filters)) p.set(URL_KEYS[k], v === true ? "1" : v);
  if (state.item) p.set("item", state.item);
  const s = p.toString();
  return s ? `/?${s}` : "/";
}

function fromUrl() {
  const p = new URLSearchParams(location.search);
  const id = (v) => (v && /^\d{1,18}$/.test(v) ? v : null);
  state.q = p.get("q") || "";
  state.to = p.get("to") || "";
  state.like = id(p.get("like"));
  state.likeLabel = "";
  state.fileKey = p.get("file");
  state.file = null;
  state.item = id(p.get("item"));
  state.filters = {};
  for (const [k, key] of Object.entries(URL_KEYS)) {
    const v = p.get(key);
    if (v) state.filters[k] = k === "dedup" ? true : v;
  }
  input.value = state.q;
  setTo(state.to);
  writeFilters(state.filters);
}

function mode() {
  if (state.file) return "file";
  if (state.like) return "like";
  if (state.q) return "text";
  return "browse";
}

function showChip() {
  if (chipPreview.src.startsWith("blob:")) URL.revokeObjectURL(chipPreview.src);
  chipPreview.hidden = true;
  chipPreview.removeAttribute("src");
  if (state.file) {
    chipLabel.textContent = state.file.name;
    if (kindOf(state.file) === "image") {
      chipPreview.src = URL.createObjectURL(state.file);
      chipPreview.hidden = false;
    }
  } else if (state.like) {
    chipLabel.textContent = `like ${state.likeLabel || "#" + state.like}`;
  }
  chip.hidden = !(state.file || state.like);
  chip.title = chipLabel.textContent;
  input.placeholder = chip.hidden ? PLACEHOLDER : "or type words instead";
}

async function labelLike() {  // a like=ID link names its item, with its picture when it has one
  const id = state.like;
  try {
    const it = await getJSON(`/items/${id}`);
    if (state.like !== id) return;
    state.likeLabel = nameOf(it);
    showChip();
    if (it.thumbnail_url || it.modality === "video") {
      chipPreview.src = `/items/${id}/thumbnail?size=64`;
      chipPreview.onerror = () => { chipPreview.hidden = true; };
      chipPreview.hidden = false;
    }
  } catch { /* the search says what is wrong */ }
}

// -- requests -------------------------------------------------------------------------------------

const CATALOG_FILTERS = ["path", "date_from", "date_to", "camera"];  // what browsing applies too: no scores

function filterParams(p, scored = true) {
  const f = state.filters;
  for (const k of CATALOG_FILTERS) if (f[k]) p.set(k, f[k]);
  if (!scored) return;
  if (f.min_score) p.set("min_score", f.min_score);
  if (f.dedup) p.set("dedup", String(DEDUP));
}

function request() {
  const k = String(PAGE), offset = String(state.offset);
  const m = mode();
  if (m === "file") {
    const p = new URLSearchParams({ k, offset });
    if (state.to) p.set("to", state.to);
    filterParams(p);
    const body = new FormData();
    body.append(kindOf(state.file) || "image", state.file);
    for (const [key, v] of p) body.append(key, v);
    return ["/search", { method: "POST", body }];
  }
  if (m === "browse") {
    const p = new URLSearchParams({ offset, limit: k });
    if (state.to) p.set("to", state.to);
    filterParams(p, false);
    return [`/browse?${p}`, {}];
  }
  const p = new URLSearchParams(m === "text" ? { text: state.q, k, offset } : { k, offset });
  if (state.to) p.set("to", state.to);
  filterParams(p);
  return [m === "like" ? `/items/${state.like}/similar?${p}` : `/search?${p}`, {}];
}

async function run({ append = false, push = true } = {}) {
  if (!append) {
    state.offset = 0;
    if (push) history.pushState(null, "", urlFor());
  }
  if (inflight) inflight.abort();
  const ctrl = (inflight = new AbortController());
  const [url, init] = request();
  const m = mode();
  loading = true;
  document.body.classList.add("busy");
  grid.setAttribute("aria-busy", "true");
  statusLine.classList.remove("error");
  if (!append) {
    statusLine.textContent = m === "browse" ? "Loading…" : "Searching…";
    empty.hidden = m !== "browse";
  }
  const t0 = performance.now();
  try {
    const res = await fetch(url, { ...init, signal: ctrl.signal, headers: { accept: "application/json" } });
    let data = null;
    try { data = await res.json(); } catch { /* the status says it */ }
    if (!res.ok) throw new Error(detailOf(data, res));
    render(data, append, performance.now() - t0, m);
  } catch (err) {
    if (err.name === "AbortError") return;
    statusLine.classList.add("error");
    statusLine.textContent = err.message;
    if (!append) { grid.replaceChildren(); hits = []; }
    state.next = null;
    more.hidden = true;
  } finally {
    if (inflight === ctrl) {
      inflight = null;
      loading = false;
      document.body.classList.remove("busy");
      grid.removeAttribute("aria-busy");
      // a tall screen may still show the end of the list: the observer sees no change then
      if (state.next != null && more.getBoundingClientRect().top < innerHeight + 400) {
        setTimeout(() => { if (!loading && state.next != null) run({ append: true, push: false }); }, 0);
      }
    }
  }
}

function render(data, append, ms, m) {
  const page = m === "browse" ? data.items : data.results;
  if (!append) { hits = []; grid.replaceChildren(); }
  const start = hits.length;
  hits.push(...page);
  grid.append(...page.map((h, i) => card(h, start + i)));
  state.next = data.next_offset ?? null;
  state.offset = state.next ?? state.offset;
  state.total = m === "browse" ? data.total : null;
  more.hidden = state.next == null;
  empty.hidden = m !== "browse";
  const n = hits.length;
  if (m === "browse") {
    const what = NOUNS[state.to] || ["item", "items"];
    const f = state.filters, where = (f.path ? ` under ${f.path}` : "") +
      (CATALOG_FILTERS.some((k) => k !== "path" && f[k]) ? " matching the filters" : "");
    const ignored = Object.keys(f).filter((k) => !CATALOG_FILTERS.includes(k)).length;
    statusLine.textContent = (data.total
      ? `${n < data.total ? `Showing ${n.toLocaleString()} of ` : data.total > 1 ? "All " : ""}${counted(data.total, what)}${where}`
      : where ? `No ${what[1]}${where}` : `No ${what[1]} here yet`) +
      (ignored ? " · score filters apply to searches" : "");
    return;
  }
  // the total: how many the query ranks, counted by the server ("lte": an upper bound, min_score or
  // dedup; "gte": a lower bound, the count stopped)
  const t = data.timings_ms || {}, what = NOUNS[state.to] || ["result", "results"];
  const bound = { lte: "at most ", gte: "at least " }[data.total_relation] || "";
  const of = data.total == null ? counted(n, what) : `${n.toLocaleString()} of ${bound}${counted(data.total, what)}`;
  statusLine.textContent = (!n ? "No results" : state.next == null ? (n > 1 ? `All ${counted(n, what)}` : counted(n, what))
    : `${of} · scroll for more`) +
    ` · ${ms.toFixed(0)} ms` + ("total" in t ? ` (server ${t.total.toFixed(1)} ms)` : "");
  statusLine.title = Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" · ");
}

const NOUNS = { image: ["image", "images"], text: ["text", "texts"], audio: ["sound", "sounds"],
                video: ["video", "videos"] };

function counted(n, [one, many]) { return `${n.toLocaleString()} ${n === 1 ? one : many}`; }

// -- cards ----------------------------------------------------------------------------------------

// The figure a list is ranked by, and the cosine: `score` is the calibrated score where lists were
// merged (then `calibrated` is set too), `cosine` always the cosine (older answers lack it: `score`).
function scoreOf(hit) {
  if (hit.score == null) return null;
  const cosine = hit.cosine ?? hit.score;
  if (hit.calibrated != null) {
    const cal = hit.calibrated.toFixed(2);
    return { name: "Calibrated score", text: cal, sub: `cos ${cosine.toFixed(2)}`,
             label: `calibrated score ${cal}, cosine ${cosine.toFixed(3)}`,
             title: `Calibrated score ${cal}, the list is ranked by it: how far this match stands above ` +
                    `the usual matches of its kind. Cosine similarity ${cosine.toFixed(3)}` };
  }
  return { name: "Cosine", text: cosine.toFixed(3), sub: "", label: `cosine ${cosine.toFixed(3)}`,
           title: `Cosine similarity ${cosine.toFixed(3)}: the list is ranked by it` };
}

function whyOf(hit) {  // why it matched, or what it is when browsing: [label, text]
  const searched = hit.score != null;
  if (hit.modality === "text") {
    if (hit.ref_path) return [searched ? "matched caption" : "caption", hit.text || ""];
    return [searched ? "matched text" : "text", hit.text || ""];
  }
  if (hit.modality === "audio") {
    if (hit.start != null) {
      return ["best match", `${hit.start.toFixed(1)}–${seconds(hit.end)}` + (hit.duration ? ` of ${seconds(hit.duration)}` : "")];
    }
    return ["sound", hit.duration ? seconds(hit.duration) : ""];
  }
  if (hit.modality === "video") {
    if (hit.start != null) {
      return ["matched", clockSpan(hit.start, hit.end) + (hit.duration ? ` of ${clock(hit.duration)}` : "")];
    }
    return ["video", hit.duration ? clock(hit.duration) : ""];
  }
  const facts = [when(hit.taken_at)?.slice(0, 10), camera(hit), hit.width ? `${hit.width}×${hit.height}` : null];
  return [searched ? "matched picture" : "picture", facts.filter(Boolean).join(" · ")];
}

function missing(label) {
  const box = document.createElement("div");
  box.className = "missing";
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", label);
  box.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 5h16v14H4zM4 15l4-4 5 5M14 14l2-2 4 4M3 3l18 18" ' +
    'fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round" stroke-linecap="round"/></svg>';
  const span = document.createElement("span");
  span.textContent = label;
  box.append(span);
  return box;
}

function picture(src, label, alt = "") {  // a thumbnail with a loading state and a clear placeholder
  const box = document.createElement("div");
  box.className = "pic loading";
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = alt;
  img.addEventListener("load", () => box.classList.remove("loading"));
  img.addEventListener("error", () => { box.classList.remove("loading"); img.replaceWith(missing(label)); });
  img.src = src;
  box.append(img);
  return box;
}

function thumbUrl(hit, size) {
  const t = hit.modality === "video" && hit.start != null ? `&t=${hit.start.toFixed(2)}` : "";
  return `/items/${hit.id}/thumbnail?size=${size}${t}`;
}

function visual(hit, size) {
  const wrap = document.createElement("div");
  wrap.className = `visual ${hit.modality}`;
  if (hit.modality === "image") {
    wrap.append(picture(thumbUrl(hit, size), "Picture not available"));
  } else if (hit.modality === "video") {
    wrap.append(picture(thumbUrl(hit, size), "Frame not available"));
    const span = document.createElement("span");
    span.className = "stamp";
    span.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M8 5v14l11-7z" fill="currentColor"/></svg>';
    span.append(hit.start != null ? clockSpan(hit.start, hit.end) : hit.duration ? clock(hit.duration) : "video");
    wrap.append(span);
  } else if (hit.modality === "audio") {
    wrap.innerHTML = '<svg class="wave" viewBox="0 0 48 24" aria-hidden="true"><path d="M2 12h2M7 8v8M12 4v16M17 9v6M22 6v12M27 2v20M32 7v10M37 10v4M42 5v14M46 11v2" ' +
      'stroke="currentColor" stroke-width="2.2" stroke-linecap="round"/></svg>';
    if (hit.start != null && hit.duration) {  // where the best window lies in the sound
      const track = document.createElement("span"), bar = document.createElement("span");
      track.className = "track";
      bar.className = "span";
      bar.style.left = `${(100 * hit.start / hit.duration).toFixed(1)}%`;
      bar.style.width = `${Math.min(100, Math.max(2, 100 * (hit.end - hit.start) / hit.duration)).toFixed(1)}%`;
      track.title = `best match ${hit.start.toFixed(1)}–${seconds(hit.end)} of ${seconds(hit.duration)}`;
      track.append(bar);
      wrap.append(track);
    }
  } else if (isPicture(hit.ref_path)) {  // a caption: the photo it describes
    wrap.append(picture(thumbUrl(hit, size), "Photo not available"));
  } else {
    const quote = document.createElement("blockquote");
    quote.textContent = hit.text || "";
    wrap.append(quote);
  }
  return wrap;
}

function card(hit, index) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.dataset.id = hit.id;
  node.dataset.index = index;
  node.dataset.modality = hit.modality;
  const [dir, name] = splitPath(hit.ref_path && hit.modality === "text" ? hit.ref_path : hit.path);
  const open = node.querySelector(".open");
  open.append(visual(hit, 384));
  open.setAttribute("aria-label", `${hit.ref_path && hit.modality === "text" ? "caption of " : ""}${name}: details`);
  open.addEventListener("click", () => openDetail(index));
  node.querySelector(".badge").textContent = hit.modality + (hit.ref_path && hit.modality === "text" ? " · caption" : "");
  const score = scoreOf(hit), scoreEl = node.querySelector(".score");
  if (score) {
    scoreEl.textContent = score.text;
    scoreEl.title = score.title;
    scoreEl.setAttribute("aria-label", score.label);
    if (score.sub) {
      const sub = document.createElement("small");
      sub.textContent = score.sub;
      scoreEl.append(" ", sub);
    }
  } else {
    scoreEl.remove();
  }
  const [label, text] = whyOf(hit);
  const why = node.querySelector(".why");
  if (text) {
    const b = document.createElement("span");
    b.className = "label";
    b.textContent = label + ": ";
    if (hit.modality !== "image") why.append(b);  // a picture's line is its facts: date, camera, size
    why.append(hit.modality === "text" ? `“${text}”` : text);
    why.title = text;
  } else {
    why.remove();
  }
  if (hit.tags && hit.tags.length) {
    const tags = document.createElement("p");
    tags.className = "tags";
    tags.setAttribute("aria-label", `Tags: ${hit.tags.join(", ")}`);
    for (const t of hit.tags.slice(0, 4)) {
      const s = document.createElement("span");
      s.className = "tag";
      s.textContent = t;
      tags.append(s);
    }
    if (hit.tags.length > 4) tags.append(`+${hit.tags.length - 4}`);
    node.querySelector(".path").before(tags);
  }
  const path = node.querySelector(".path");
  const b = document.createElement("b");
  b.textContent = name;
  path.append(document.createTextNode(dir), b);
  path.title = hit.path;
  if (hit.modality === "audio") {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = `/items/${hit.id}/media${hit.start != null ? `#t=${hit.start.toFixed(2)}` : ""}`;
    audio.setAttribute("aria-label", `Play ${name}`);
    path.after(audio);
  }
  const like = node.querySelector(".like");
  like.setAttribute("aria-label", `More like ${name}`);
  like.addEventListener("click", () => likeItem(hit));
  return node;
}

function likeItem(hit) {
  state.item = null;
  if (dialog.open) { afterClose = input; dialog.close(); }
  state.like = String(hit.id);
  state.likeLabel = nameOf(hit);
  state.file = null;
  state.fileKey = null;
  state.q = "";
  input.value = "";
  showChip();
  if (hit.modality === "image" || hit.modality === "video" || isPicture(hit.ref_path)) {
    chipPreview.src = thumbUrl(hit, 64);
    chipPreview.hidden = false;
  }
  run();
  window.scrollTo({ top: 0, behavior: "smooth" });
  input.focus({ preventScroll: true });
}

// -- the detail view ------------------------------------------------------------------------------

function fact(dl, term, value, href) {
  if (value == null || value === "") return;
  const dt = document.createElement("dt"), dd = document.createElement("dd");
  dt.textContent = term;
  if (href) {
    const a = document.createElement("a");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener";
    a.textContent = value;
    dd.append(a);
  } else if (Array.isArray(value)) {
    for (const v of value) {
      const s = document.createElement("span");
      s.className = "tag";
      s.textContent = v;
      dd.append(s);
    }
  } else {
    dd.textContent = value;
  }
  dl.append(dt, dd);
}

function detailMedia(it) {
  const box = $("detail-media");
  const key = `${it.id}@${it.start}`;
  if (box.dataset.key === key && box.isConnected && dialog.open) return;  // already shown (and maybe playing)
  box.dataset.key = key;
  box.replaceChildren();
  box.className = `detail-media ${it.modality}`;
  const span = it.start != null ? `#t=${it.start.toFixed(2)},${it.end.toFixed(2)}` : "";
  if (it.modality === "video") {
    const video = document.createElement("video");
    video.controls = true;
    video.playsInline = true;
    video.preload = "metadata";
    video.poster = thumbUrl(it, 1024);
    video.src = `/items/${it.id}/media${span}`;
    video.setAttribute("aria-label", `Video ${nameOf(it)}` + (it.start != null ? `, from ${clock(it.start, true)}` : ""));
    box.append(video);
  } else if (it.modality === "audio") {
    box.append(visual(it, 0));
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = `/items/${it.id}/media${span}`;
    audio.setAttribute("aria-label", `Play ${nameOf(it)}`);
    box.append(audio);
  } else if (it.modality === "image" || isPicture(it.ref_path)) {
    box.append(picture(`/items/${it.id}/thumbnail?size=1024`, it.modality === "image" ? "Picture not available" : "Photo not available",
                       it.modality === "image" ? nameOf(it) : `The photo: ${nameOf(it)}`));
    if (it.modality === "text") {
      const quote = document.createElement("blockquote");
      quote.textContent = it.text || "";
      box.append(quote);
    }
  } else {
    const quote = document.createElement("blockquote");
    quote.className = "note";
    quote.textContent = it.text || "";
    box.append(quote);
  }
}

function renderDetail(it, hit) {
  const [dir, name] = splitPath(it.path);
  $("detail-title").textContent = it.modality === "text" && it.ref_path ? `Caption of ${nameOf(it)}` : name;
  detailMedia({ ...it, start: hit?.start ?? null, end: hit?.end ?? null });
  const why = $("detail-why");
  why.replaceChildren();
  if (hit && hit.score != null) {
    const [label, text] = whyOf(hit);
    const s = scoreOf(hit);
    const reason = hit.modality === "text" ? label : hit.modality !== "image" && text ? `${label}: ${text}` : "";
    why.textContent = `${s.name} ${s.text}${s.sub ? ` (${s.sub})` : ""}` + (reason ? ` · ${reason}` : "");
    why.title = s.title;
  }
  const dl = $("detail-facts");
  dl.replaceChildren();
  fact(dl, "Folder", dir || roots.find((r) => it.path.startsWith(r + "/")) || "/");
  fact(dl, "File", name);
  if (it.ref_path) fact(dl, "Describes", splitPath(it.ref_path).join(""));
  fact(dl, "Kind", [it.modality, it.mime].filter(Boolean).join(" · "));
  fact(dl, "Size", bytes(it.size));
  if (it.width) fact(dl, "Dimensions", `${it.width} × ${it.height} px`);
  if (it.duration) fact(dl, "Duration", it.modality === "video" ? clock(it.duration) : seconds(it.duration));
  fact(dl, "Taken", when(it.taken_at));
  fact(dl, "Camera", camera(it));
  fact(dl, "Lens", it.lens);
  if (it.lat != null && it.lon != null) {
    const [la, lo] = [it.lat.toFixed(5), it.lon.toFixed(5)];
    fact(dl, "Place", `${la}, ${lo}`, `https://www.openstreetmap.org/?mlat=${la}&mlon=${lo}#map=15/${la}/${lo}`);
  }
  fact(dl, "Modified", when(it.modified));
  if (it.tags && it.tags.length) fact(dl, "Tags", it.tags);
  fact(dl, "Item", `#${it.id}`);
  $("detail-open").href = `/items/${it.id}/media`;
  $("detail-prev").disabled = detailIndex == null || detailIndex <= 0;
  $("detail-next").disabled = detailIndex == null || (detailIndex >= hits.length - 1 && state.next == null);
}

async function detailExtras(it, token) {  // captions of a photo, or of the photo a caption describes
  const section = $("detail-captions"), list = section.querySelector("ul");
  const photoBtn = $("detail-photo");
  section.hidden = true;
  photoBtn.hidden = true;
  list.replaceChildren();
  const ref = it.modality === "text" ? (isPicture(it.ref_path) ? it.ref_path : null) : it.path;
  if (!ref || it.modality === "text" && !it.ref_path) return;
  try {
    const [caps, photo] = await Promise.all([
      getJSON(`/browse?${new URLSearchParams({ ref, to: "text", limit: "50" })}`),
      it.modality === "text" ? getJSON(`/items?${new URLSearchParams({ path: ref })}`).catch(() => null) : null,
    ]);
    if (token !== detailToken) return;
    const others = caps.items.filter((c) => c.id !== it.id);
    for (const c of others) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "caption";
      b.textContent = c.text;
      b.title = "Open this caption";
      b.addEventListener("click", () => openDetail(null, c.id));
      li.append(b);
      list.append(li);
    }
    $("detail-captions-title").textContent = it.modality === "text" ? "Other captions of this photo" : "Captions";
    section.hidden = !others.length;
    if (photo && photo.item_ids.length) {
      photoBtn.hidden = false;
      photoBtn.onclick = () => openDetail(null, photo.item_ids[0]);
    }
  } catch { /* extras only */ }
}

async function openDetail(index, id = null) {
  const token = ++detailToken;
  const hit = index != null ? hits[index] : null;
  detailIndex = index;
  let it = hit;
  if (hit) renderDetail(hit, hit);
  else {  // an item by id (a link, a caption's photo): nothing to show until it comes
    $("detail-title").textContent = "Loading…";
    $("detail-why").textContent = "";
    $("detail-facts").replaceChildren();
    $("detail-captions").hidden = true;
  }
  if (!dialog.open) {
    lastFocus = document.activeElement;
    dialog.showModal();
  }
  state.item = String(hit ? hit.id : id);  // the link names it at once (a reload reopens this one)
  history.replaceState(null, "", urlFor());
  try {
    it = { ...(hit || {}), ...(await getJSON(`/items/${hit ? hit.id : id}`)) };
  } catch (err) {
    if (token !== detailToken) return;
    if (!hit) {
      $("detail-title").textContent = "Not found";
      $("detail-why").textContent = err.message;
      $("detail-media").replaceChildren(missing("Not available"));
      $("detail-facts").replaceChildren();
      return;
    }
  }
  if (token !== detailToken) return;
  renderDetail(it, hit);
  state.item = String(it.id);
  history.replaceState(null, "", urlFor());
  $("detail-like").onclick = () => likeItem(it);
  detailExtras(it, token);
}

async function step(delta) {
  if (detailIndex == null) return;
  let j = detailIndex + delta;
  if (j >= hits.length && state.next != null && !loading) await run({ append: true, push: false });
  if (j < 0 || j >= hits.length) return;
  openDetail(j);
  const card = grid.children[j];
  if (card) lastFocus = card.querySelector(".open");
}

dialog.addEventListener("close", () => {
  detailToken++;
  delete $("detail-media").dataset.key;
  for (const m of dialog.querySelectorAll("audio, video")) m.pause();
  if (state.item) {  // closed by the user (not by a new query or the Back button)
    state.item = null;
    history.replaceState(null, "", urlFor());
  }
  const back = afterClose || (detailIndex != null ? grid.children[detailIndex]?.querySelector(".open") : lastFocus);
  afterClose = null;
  (back && back.isConnected ? back : input).focus({ preventScroll: true });
  if (back !== input) back?.scrollIntoView?.({ block: "nearest" });
});
dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });  // the backdrop
dialog.addEventListener("keydown", (e) => {
  if (e.target.closest("audio, video, input")) return;
  if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
  if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
});
$("detail-close").addEventListener("click", () => dialog.close());
$("detail-prev").addEventListener("click", () => step(-1));
$("detail-next").addEventListener("click", () => step(1));

// -- keyboard -------------------------------------------------------------------------------------

function columns() {
  const cards = grid.children;
  if (!cards.length) return 1;
  const top = cards[0].offsetTop;
  let n = 0;
  while (n < cards.length && cards[n].offsetTop === top) n++;
  return Math.max(1, n);
}

function focusCard(i) {
  const card = grid.children[i];
  if (!card) return;
  const open = card.querySelector(".open");
  open.focus({ preventScroll: true });
  card.scrollIntoView({ block: "nearest" });
  if (i >= grid.children.length - columns() && state.next != null && !loading) run({ append: true, push: false });
}

grid.addEventListener("keydown", (e) => {
  const card = e.target.closest(".card");
  if (!card || e.target.closest("audio") || e.altKey || e.ctrlKey || e.metaKey) return;
  const i = Number(card.dataset.index), cols = columns(), last = grid.children.length - 1;
  const to = { ArrowLeft: i - 1, ArrowRight: i + 1, ArrowUp: i - cols, ArrowDown: i + cols, Home: 0, End: last }[e.key];
  if (e.key === "Escape") { e.preventDefault(); input.focus(); return; }
  if (to == null) return;
  e.preventDefault();
  if (to < 0 && e.key === "ArrowUp") { input.focus(); return; }
  focusCard(Math.max(0, Math.min(last, to)));
});

input.addEventListener("keydown", (e) => {
  if (e.key === "ArrowDown" && grid.children.length) { e.preventDefault(); focusCard(0); }
});

document.addEventListener("keydown", (e) => {
  if (e.key !== "/" || dialog.open || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName)) return;
  e.preventDefault();
  input.focus();
  input.select();
});

// -- queries: text, file, like; filters ------------------------------------------------------------

async function useFile(file) {
  if (!file) return;
  if (!kindOf(file)) {
    statusLine.classList.add("error");
    statusLine.textContent = `${file.name}: drop an image, a sound or a video file`;
    return;
  }
  state.file = file;  // a file query replaces the text and the "like" query
  state.like = null;
  state.q = "";
  input.value = "";
  state.fileKey = null;
  showChip();
  state.fileKey = await saveFile(file);
  run();
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const q = input.value.trim();
  state.to = currentTo();
  state.filters = readFilters();
  if (q) {  // words replace a file or "like" query
    state.q = q;
    state.file = null;
    state.fileKey = null;
    state.like = null;
    showChip();
  } else {
    state.q = "";
  }
  run();
});
$("to").addEventListener("change", () => { state.to = currentTo(); run(); });
for (const el of Object.values(FILTERS)) {
  el.addEventListener("change", () => { state.filters = readFilters(); writeFilters(state.filters); run(); });
}
$("filters-clear").addEventListener("click", () => {
  state.filters = {};
  writeFilters({});
  run();
  FILTERS.path.focus();
});
$("filters-toggle").addEventListener("click", () => {
  const panel = $("filters"), open = panel.hidden;
  panel.hidden = !open;
  $("filters-toggle").setAttribute("aria-expanded", String(open));
  if (open) FILTERS.path.focus();
});
$("query-clear").addEventListener("click", () => {
  state.file = null; state.fileKey = null; state.like = null; fileInput.value = ""; showChip(); run(); input.focus();
});
$("attach").addEventListener("click", () => fileInput.click());
fileInput.addEventListener("change", () => useFile(fileInput.files[0]));
more.addEventListener("click", () => run({ append: true, push: false }));
window.addEventListener("popstate", () => {
  if (dialog.open) { state.item = null; afterClose = input; dialog.close(); }
  restore();
});

// infinite scroll: the next page loads as the end of the list comes near
new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && state.next != null && !loading) run({ append: true, push: false });
}, { rootMargin: "400px 0px" }).observe(more);

let dragDepth = 0;
document.addEventListener("dragenter", (e) => { if (e.dataTransfer.types.includes("Files")) { dragDepth++; dropzone.hidden = false; } });
document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; dropzone.hidden = true; } });
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  dropzone.hidden = true;
  useFile(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData?.files || [])][0];
  if (file) { e.preventDefault(); useFile(file); }
});

async function restore() {
  if (statsDialog.open) statsDialog.close();
  fromUrl();
  if (new URLSearchParams(location.search).get("view") === "stats") showStats();
  if (state.fileKey) {
    state.file = await loadFile(state.fileKey);
    if (!state.file) {
      state.fileKey = null;
      showChip();
      statusLine.classList.add("error");
      statusLine.textContent = "The file of this link is not stored in this browser: drop it again to search with it.";
      grid.replaceChildren();
      hits = [];
      more.hidden = true;
      return;
    }
  }
  showChip();
  if (state.like) labelLike();
  const item = state.item;
  await run({ push: false });
  if (item) {
    const i = hits.findIndex((h) => String(h.id) === item);
    openDetail(i >= 0 ? i : null, item);
  }
}

async function start() {
  try {
    const info = await getJSON("/catalog");
    roots = [...info.roots].sort((a, b) => b.length - a.length);
    counts = info.items;
    const names = { image: ["image", "images"], text: ["text", "texts"], audio: ["sound", "sounds"], video: ["video", "videos"] };
    const items = Object.entries(counts).map(([k, v]) => `${v.toLocaleString()} ${(names[k] || [k, k])[v === 1 ? 0 : 1]}`).join(", ");
    $("catalog-info").textContent = items ? `Indexed: ${items}.` : "The catalog is empty: index a folder first.";
  } catch { /* the search itself will say what is wrong */ }
  restore();
}

// -- the catalog and its health (GET /stats, GET /jobs) -------------------------------------------

const statsDialog = $("stats");

function table(head, rows) {
  const t = document.createElement("table");
  const tr = t.createTHead().insertRow();
  for (const h of head) { const th = document.createElement("th"); th.scope = "col"; th.textContent = h; tr.append(th); }
  const body = t.createTBody();
  for (const row of rows) {
    const r = body.insertRow();
    for (const cell of row) {
      const td = r.insertCell();
      if (cell instanceof Node) td.append(cell); else td.textContent = cell ?? "–";
    }
  }
  const wrap = document.createElement("div");
  wrap.className = "table";
  wrap.append(t);
  return wrap;
}

function section(title, ...content) {
  const s = document.createElement("section");
  const h = document.createElement("h3");
  h.textContent = title;
  s.append(h, ...content);
  return s;
}

function health(c) {
  const idx = c.index, span = document.createElement("span");
  let ok = true, text = "in step";
  if (c.vectors.stored < c.live) { ok = false; text = `${c.live - c.vectors.stored} vectors missing: run mmsearch check`; }
  else if (!idx) { text = c.live ? "no index file: searched exactly" : "empty"; ok = !c.live; }
  else if (idx.ntotal !== c.live) { ok = false; text = `index holds ${idx.ntotal} of ${c.live}: catching up at the next sync`; }
  span.className = `health ${ok ? "ok" : "warn"}`;
  span.textContent = text;
  return span;
}

async function showStats() {
  const body = $("stats-body");
  if (!statsDialog.open) statsDialog.showModal();
  try {
    const [st, jobs] = await Promise.all([getJSON("/stats"), getJSON("/jobs").catch(() => ({ jobs: [] }))]);
    const n = (v) => (v ?? 0).toLocaleString();
    const counts = document.createElement("div");
    counts.className = "tiles";
    const order = ["image", "text", "audio", "video"], rank = (k) => (order.includes(k) ? order.indexOf(k) : order.length);
    for (const [k, v] of Object.entries(st.items).sort((a, b) => rank(a[0]) - rank(b[0]))) {
      const tile = document.createElement("div");
      tile.className = "tile";
      const b = document.createElement("b"), span = document.createElement("span");
      b.textContent = n(v);
      const names = { image: ["image", "images"], text: ["text", "texts"], audio: ["sound", "sounds"], video: ["video", "videos"] };
      span.textContent = (names[k] || [k, k])[v === 1 ? 0 : 1];
      tile.append(b, span);
      counts.append(tile);
    }
    const files = Object.entries(st.files).map(([k, v]) => `${n(v)} ${k}`).join(", ") || "none";
    const facts = document.createElement("dl");
    facts.className = "facts";
    fact(facts, "Files", files);
    fact(facts, "Folders", st.roots.join(", ") || "none");
    for (const [name, m] of Object.entries(st.models)) fact(facts, `Model (${name})`, `${m.spec} · ${m.dim} dims`);
    fact(facts, "Database", `${st.database.split(":")[0]} · schema ${st.schema_version}`);
    if (st.service?.uptime_s != null) fact(facts, "Server", `up ${Math.round(st.service.uptime_s / 60)} min` +
      (st.service.read_only ? " · read-only" : "") + (st.service.audio_off ? ` · audio off: ${st.service.audio_off}` : ""));
    const indexes = table(["Collection", "Index", "Vectors", "Size", "Health"], Object.entries(st.collections).map(([name, c]) => [
      name, c.index ? `${c.index.factory} (${c.index.kind})` : "none", n(c.live),
      bytes((c.index?.bytes || 0) + c.vectors.bytes), health(c)]));
    const running = jobs.jobs.filter((j) => j.state === "running" || j.state === "queued");
    const live = running.length ? [section("Indexing now", table(["Started", "Folder", "State", "Files"], running.map((j) => [
      when(j.created_at), splitPath(j.path).join(""), j.state, `${n(j.done)} / ${n(j.total)}`])))] : [];
    const runs = st.runs || [];
    const history = runs.length
      ? table(["Finished", "Folders", "Added · updated · removed · failed", "Unchanged", "Seconds"], runs.map((r) => [
          when(r.finished), (r.roots || []).map((f) => splitPath(f).join("")).join(", "),
          ["added", "updated", "removed", "failed"].map((k) => n(r[k])).join(" · "), n(r.unchanged),
          (r.seconds ?? 0).toFixed(1)]))
      : Object.assign(document.createElement("p"), { className: "muted", textContent: "No indexing runs recorded yet." });
    const parts = [section("Items", counts, facts), section("Indexes", indexes), ...live, section("Indexing history", history)];
    if (st.failures.length) {
      parts.push(section(`Files that failed (${st.failures.length})`, table(["File", "Reason"],
        st.failures.map((f) => [splitPath(f.path).join(""), f.reason]))));
    }
    body.replaceChildren(...parts);
  } catch (err) {
    body.replaceChildren(Object.assign(document.createElement("p"), { className: "error", textContent: err.message }));
  }
}

$("stats-open").addEventListener("click", (e) => {
  e.preventDefault();
  history.pushState({ view: "stats" }, "", "/?view=stats");
  showStats();
});
$("stats-close").addEventListener("click", () => statsDialog.close());
statsDialog.addEventListener("click", (e) => { if (e.target === statsDialog) statsDialog.close(); });
statsDialog.addEventListener("close", () => {
  if (new URLSearchParams(location.search).get("view") === "stats") history.replaceState(null, "", urlFor());
});

// the page's renderers, for tests and the console (e.g. a result of a kind this catalog lacks)
window.mmsearch = Object.freeze({ card, detailMedia, whyOf, scoreOf });

start();
