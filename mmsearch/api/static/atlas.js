// The atlas page: draws /atlas.json on a canvas (dots for every item, thumbnails for one image
// per cell), and searches a clicked region with /similar over the items nearest the click.
// State (collection, clicked point) lives in the URL, so a map position can be shared.

const $ = (id) => document.getElementById(id);
const canvas = $("map"), ctx = canvas.getContext("2d"), tip = $("tip");
const status = $("atlas-status"), picker = $("collection"), found = $("found");
const COLORS = { image: "#2f5bea", text: "#d9822b", audio: "#1e9e6a", video: "#b0417a" };
const CELL = 72;        // css px per thumbnail cell
const PICK = 12;        // items of a region that make up the query
const state = { collection: "clip.image", points: [], thumbs: new Map(), at: null, cursor: { x: 0.5, y: 0.5 } };

function readUrl() {
  const p = new URLSearchParams(location.search);
  state.collection = p.get("collection") || state.collection;
  const x = parseFloat(p.get("x")), y = parseFloat(p.get("y"));
  state.at = Number.isFinite(x) && Number.isFinite(y) ? { x: clamp(x), y: clamp(y) } : null;
}

function writeUrl() {
  const p = new URLSearchParams({ collection: state.collection });
  if (state.at) { p.set("x", state.at.x.toFixed(4)); p.set("y", state.at.y.toFixed(4)); }
  history.replaceState(null, "", `/atlas?${p}`);
}

const clamp = (v) => Math.min(1, Math.max(0, v));

function size() {
  const ratio = window.devicePixelRatio || 1, box = canvas.getBoundingClientRect();
  canvas.width = Math.round(box.width * ratio);
  canvas.height = Math.round(box.height * ratio);
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return box;
}

const PAD = CELL / 2;  // room for a thumbnail drawn on a point at the edge
function toScreen(p, box) {
  return { x: PAD + p.x * (box.width - 2 * PAD), y: PAD + (1 - p.y) * (box.height - 2 * PAD) };
}
function fromScreen(x, y, box) {
  return { x: clamp((x - PAD) / (box.width - 2 * PAD)), y: clamp(1 - (y - PAD) / (box.height - 2 * PAD)) };
}

function draw() {
  const box = size();
  ctx.clearRect(0, 0, box.width, box.height);
  for (const p of state.points) {
    const s = toScreen(p, box);
    ctx.fillStyle = COLORS[p.modality] || "#888";
    ctx.globalAlpha = 0.55;
    ctx.beginPath();
    ctx.arc(s.x, s.y, 2.2, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.globalAlpha = 1;
  for (const [key, p] of cells(box)) drawThumb(key, p, box);
  for (const mark of [state.at, document.activeElement === canvas ? state.cursor : null]) {
    if (!mark) continue;
    const s = toScreen(mark, box);
    ctx.strokeStyle = getComputedStyle(document.body).color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(s.x, s.y, mark === state.at ? 18 : 8, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

// One picture per grid cell: the image point nearest the cell's centre, so the map reads as an
// atlas of what lies where without drawing thousands of thumbnails.
function cells(box) {
  const best = new Map();
  for (const p of state.points) {
    if (p.modality !== "image") continue;
    const s = toScreen(p, box);
    const cx = Math.floor(s.x / CELL), cy = Math.floor(s.y / CELL);
    const d = Math.hypot(s.x - (cx + 0.5) * CELL, s.y - (cy + 0.5) * CELL);
    const key = `${cx},${cy}`;
    if (!best.has(key) || d < best.get(key).d) best.set(key, { d, p });
  }
  return [...best].map(([key, v]) => [key, v.p]);
}

function drawThumb(key, p, box) {
  let img = state.thumbs.get(p.id);
  if (!img) {
    img = new Image();
    img.onload = () => requestAnimationFrame(draw);
    img.src = `/items/${p.id}/thumbnail?size=128`;
    state.thumbs.set(p.id, img);
  }
  if (!img.complete || !img.naturalWidth) return;
  const s = toScreen(p, box), side = CELL - 16;
  const scale = side / Math.max(img.naturalWidth, img.naturalHeight);
  const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
  ctx.drawImage(img, s.x - w / 2, s.y - h / 2, w, h);
  ctx.strokeStyle = "rgb(255 255 255 / 85%)";
  ctx.lineWidth = 1.5;
  ctx.strokeRect(s.x - w / 2, s.y - h / 2, w, h);
}

function nearest(at, n) {
  return state.points
    .map((p) => ({ p, d: (p.x - at.x) ** 2 + (p.y - at.y) ** 2 }))
    .sort((a, b) => a.d - b.d)
    .slice(0, n)
    .map((v) => v.p);
}

async function load() {
  status.textContent = "Loading the map…";
  const res = await fetch(`/atlas.json?collection=${encodeURIComponent(state.collection)}`,
                          { headers: { accept: "application/json" } });
  const data = await res.json();
  if (!res.ok) { status.textContent = errorText(data); state.points = []; draw(); return; }
  state.points = data.points;
  state.thumbs.clear();
  const shown = data.points.length < data.total ? `a sample of ${data.points.length} of ${data.total}` : `${data.total}`;
  status.textContent = `${shown} vectors · ${Math.round(100 * (data.explained[0] + data.explained[1]))}% of the variance shown`;
  draw();
  if (state.at) searchAt(state.at);
}

function errorText(data) {
  const d = data && (data.detail ?? data.title);
  return typeof d === "string" ? d : "The map could not be loaded.";
}

async function searchAt(at) {
  state.at = at;
  writeUrl();
  draw();
  const region = nearest(at, PICK);
  const ids = region.map((p) => p.id);
  found.replaceChildren();
  $("found-title").hidden = !ids.length;
  if (!ids.length) return;
  const res = await fetch("/similar", {
    method: "POST", headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify({ item_ids: ids, k: 24 }),
  });
  const data = await res.json();
  if (!res.ok) { status.textContent = errorText(data); return; }
  // The region's own items first (similar leaves its query items out), then the items like them.
  const here = region.map((p) => card({ ...p, score: null }));
  found.replaceChildren(...here, ...data.results.map(card));
}

function card(hit) {
  const a = document.createElement("a");
  a.className = "atlas-card";
  a.href = `/?like=${hit.id}`;
  a.title = "Search for more like this";
  if (hit.modality === "image" || hit.ref_path) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = hit.text || hit.path.split("/").pop();
    img.src = `/items/${hit.id}/thumbnail?size=384`;
    a.append(img);
  } else {
    const t = document.createElement("div");
    t.className = "atlas-text";
    t.textContent = hit.text || hit.path.split("/").pop();
    a.append(t);
  }
  const p = document.createElement("p");
  const how = hit.score === null ? "in the region" : hit.score.toFixed(3);
  p.textContent = `${hit.modality} · ${how} · ${hit.path.split("/").pop()}`;
  a.append(p);
  return a;
}

function showTip(e) {
  const box = canvas.getBoundingClientRect();
  const at = fromScreen(e.clientX - box.left, e.clientY - box.top, box);
  const [p] = nearest(at, 1);
  if (!p) { tip.hidden = true; return; }
  const s = toScreen(p, box);
  if (Math.hypot(s.x - (e.clientX - box.left), s.y - (e.clientY - box.top)) > 24) { tip.hidden = true; return; }
  tip.replaceChildren();
  if (p.modality === "image") {
    const img = document.createElement("img");
    img.alt = "";
    img.src = `/items/${p.id}/thumbnail?size=256`;
    tip.append(img);
  }
  tip.append(document.createTextNode(p.text || p.path.split("/").pop()));
  tip.style.left = `${Math.min(s.x + 12, box.width - 200)}px`;
  tip.style.top = `${s.y + 12}px`;
  tip.hidden = false;
}

canvas.addEventListener("click", (e) => {
  const box = canvas.getBoundingClientRect();
  searchAt(fromScreen(e.clientX - box.left, e.clientY - box.top, box));
});
canvas.addEventListener("mousemove", showTip);
canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
canvas.addEventListener("focus", draw);
canvas.addEventListener("blur", draw);
canvas.addEventListener("keydown", (e) => {
  const step = e.shiftKey ? 0.1 : 0.02;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
  if (moves[e.key]) {
    e.preventDefault();
    state.cursor = { x: clamp(state.cursor.x + moves[e.key][0]), y: clamp(state.cursor.y + moves[e.key][1]) };
    draw();
  } else if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    searchAt({ ...state.cursor });
  }
});
picker.addEventListener("change", () => { state.collection = picker.value; state.at = null; writeUrl(); load(); });
window.addEventListener("resize", () => requestAnimationFrame(draw));

async function start() {
  readUrl();
  const res = await fetch("/stats", { headers: { accept: "application/json" } });
  const stats = res.ok ? await res.json() : { collections: {} };
  const names = Object.entries(stats.collections || {}).filter(([, c]) => c.live > 0).map(([n]) => n);
  if (!names.includes(state.collection) && names.length) state.collection = names[0];
  picker.replaceChildren(...names.map((n) => new Option(n, n, false, n === state.collection)));
  if (!names.length) { status.textContent = "Nothing is indexed yet: run mmsearch index FOLDER."; return; }
  await load();
}

start();
