// The search page: plain JS over the JSON API. The page's state lives in the URL
// (?q=...&to=...&like=ID), so every view can be linked, and each view maps to one API call.

const $ = (id) => document.getElementById(id);
const form = $("search"), input = $("q"), fileInput = $("file"), grid = $("results");
const statusLine = $("status"), more = $("more"), empty = $("empty"), dropzone = $("dropzone");
const chip = $("query-chip"), chipLabel = $("query-label"), chipPreview = $("query-preview");
const PAGE = 24;

const state = { q: "", to: "", like: null, likeLabel: "", file: null, offset: 0 };
let roots = [];  // catalog roots, longest first: paths are shown relative to theirs
let inflight = null;

function kindOf(file) {
  if (file.type.startsWith("image/")) return "image";
  if (file.type.startsWith("audio/")) return "audio";
  const ext = file.name.split(".").pop().toLowerCase();
  if (["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif"].includes(ext)) return "image";
  if (["wav", "flac", "ogg", "oga", "mp3"].includes(ext)) return "audio";
  return null;
}

function currentTo() {
  return form.querySelector("input[name=to]:checked").value;
}

function setTo(value) {
  const radio = form.querySelector(`input[name=to][value="${CSS.escape(value || "")}"]`);
  (radio || form.querySelector("input[name=to][value='']")).checked = true;
}

function showChip() {
  if (chipPreview.src) URL.revokeObjectURL(chipPreview.src);
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
}

function urlFor() {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  if (state.to) p.set("to", state.to);
  if (state.like) p.set("like", state.like);
  const s = p.toString();
  return s ? `/?${s}` : "/";
}

async function request() {
  const k = String(PAGE), offset = String(state.offset);
  if (state.file) {
    const body = new FormData();
    body.append(kindOf(state.file) || "image", state.file);
    if (state.q) body.append("text", state.q);
    if (state.to) body.append("to", state.to);
    body.append("k", k);
    body.append("offset", offset);
    return ["/search", { method: "POST", body }];
  }
  if (state.like) {
    const p = new URLSearchParams({ k, offset });
    if (state.to) p.set("to", state.to);
    return [`/items/${state.like}/similar?${p}`, {}];
  }
  const p = new URLSearchParams({ text: state.q, k, offset });
  if (state.to) p.set("to", state.to);
  return [`/search?${p}`, {}];
}

async function run({ append = false, push = true } = {}) {
  if (!state.q && !state.file && !state.like) {
    grid.replaceChildren();
    more.hidden = true;
    statusLine.textContent = "";
    empty.hidden = false;
    return;
  }
  empty.hidden = true;
  if (!append) state.offset = 0;
  if (push && !state.file) history.pushState(null, "", urlFor());
  if (inflight) inflight.abort();
  const ctrl = (inflight = new AbortController());
  const [url, init] = await request();
  document.body.classList.add("busy");
  statusLine.classList.remove("error");
  statusLine.textContent = "Searching…";
  const t0 = performance.now();
  try {
    const res = await fetch(url, { ...init, signal: ctrl.signal, headers: { accept: "application/json" } });
    const data = await res.json();
    if (!res.ok) throw new Error(detailOf(data, res));
    const ms = performance.now() - t0;
    render(data, append, ms);
  } catch (err) {
    if (err.name === "AbortError") return;
    statusLine.classList.add("error");
    statusLine.textContent = err.message;
    if (!append) grid.replaceChildren();
    more.hidden = true;
  } finally {
    if (inflight === ctrl) inflight = null;
    document.body.classList.remove("busy");
  }
}

function detailOf(data, res) {
  const d = data && data.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d) && d.length) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  return `${res.status} ${res.statusText}`;
}

function render(data, append, ms) {
  const cards = data.results.map(card);
  if (append) grid.append(...cards); else grid.replaceChildren(...cards);
  const shown = grid.children.length;
  const t = data.timings_ms || {};
  const parts = ["embed", "ann", "rerank", "hydrate"].filter((k) => k in t).map((k) => `${k} ${t[k].toFixed(1)}`);
  statusLine.textContent = (shown ? `${shown} result${shown === 1 ? "" : "s"}` : "No results") +
    ` · ${ms.toFixed(0)} ms round trip` +
    ("total" in t ? ` · server ${t.total.toFixed(1)} ms` : "") +
    (parts.length ? ` (${parts.join(" · ")})` : "");
  state.offset = data.next_offset ?? state.offset;
  more.hidden = data.next_offset == null;
}

function splitPath(path) {
  const root = roots.find((r) => path.startsWith(r + "/"));
  const rel = root ? path.slice(root.length + 1) : path;
  const i = rel.lastIndexOf("/");
  return [rel.slice(0, i + 1), rel.slice(i + 1)];
}

function card(hit) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const media = node.querySelector(".media");
  media.href = `/items/${hit.id}/media`;
  if (hit.modality === "image") {
    media.append(thumb(hit.id, hit.path));
  } else if (hit.modality === "audio") {
    media.classList.add("audio");
    media.removeAttribute("href");
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    const frag = hit.start != null ? `#t=${hit.start.toFixed(2)}` : "";
    audio.src = `/items/${hit.id}/media${frag}`;
    const where = document.createElement("span");
    where.className = "wave";
    where.textContent = hit.start != null
      ? `best match ${hit.start.toFixed(1)}–${hit.end.toFixed(1)} s` + (hit.duration ? ` of ${hit.duration.toFixed(1)} s` : "")
      : (hit.duration ? `${hit.duration.toFixed(1)} s` : "");
    media.append(audio, where);
  } else {
    media.classList.add("text");
    if (hit.ref_path && kindOf({ type: "", name: hit.ref_path }) === "image") {
      const img = thumb(hit.id, hit.ref_path);
      img.addEventListener("error", () => img.remove());
      media.append(img);
    }
    const quote = document.createElement("blockquote");
    quote.textContent = hit.text || "";
    media.append(quote);
  }
  node.querySelector(".badge").textContent = hit.modality + (hit.ref_path ? " · caption" : "");
  node.querySelector(".score").textContent = hit.score.toFixed(3);
  const [dir, name] = splitPath(hit.ref_path || hit.path);
  const path = node.querySelector(".path");
  const b = document.createElement("b");
  b.textContent = name;
  path.append(document.createTextNode(dir), b);
  path.title = hit.path;
  node.querySelector(".like").addEventListener("click", () => {
    state.like = hit.id;
    state.likeLabel = name;
    state.file = null;
    state.q = "";
    input.value = "";
    showChip();
    run();
    window.scrollTo({ top: 0, behavior: "smooth" });
  });
  return node;
}

function thumb(id, alt) {
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = alt;
  img.src = `/items/${id}/thumbnail?size=384`;
  return img;
}

function useFile(file) {
  if (!file) return;
  if (!kindOf(file)) {
    statusLine.classList.add("error");
    statusLine.textContent = `${file.name}: drop an image or a sound file`;
    return;
  }
  state.file = file;
  state.like = null;
  showChip();
  run();
}

function fromUrl() {
  const p = new URLSearchParams(location.search);
  state.q = p.get("q") || "";
  state.to = p.get("to") || "";
  state.like = p.get("like") && /^\d+$/.test(p.get("like")) ? p.get("like") : null;
  state.likeLabel = "";
  state.file = null;
  input.value = state.q;
  setTo(state.to);
  showChip();
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  state.q = input.value.trim();
  state.to = currentTo();
  if (state.q && state.like) { state.like = null; showChip(); }
  run();
});
$("to").addEventListener("change", () => { state.to = currentTo(); run(); });
$("query-clear").addEventListener("click", () => {
  state.file = null; state.like = null; fileInput.value = ""; showChip(); run(); input.focus();
});
fileInput.addEventListener("change", () => useFile(fileInput.files[0]));
more.addEventListener("click", () => run({ append: true, push: false }));
window.addEventListener("popstate", () => { fromUrl(); run({ push: false }); });

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

async function start() {
  try {
    const res = await fetch("/catalog");
    if (res.ok) {
      const info = await res.json();
      roots = [...info.roots].sort((a, b) => b.length - a.length);
      const items = Object.entries(info.items).map(([k, v]) => `${v} ${k}`).join(", ");
      $("catalog-info").textContent = items ? `Indexed: ${items}.` : "The catalog is empty: index a folder first.";
    }
  } catch { /* the search itself will say what is wrong */ }
  fromUrl();
  run({ push: false });
}

start();
