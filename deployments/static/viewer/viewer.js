// skyrender's sky viewer: a canvas fed by POST v1/preview, panned and zoomed in the page.
//
// The view is (ra, dec, fovDeg, projection) plus display settings. Every pan or zoom is
// also a screen transform (scale s, shift tx, ty: x' = s x + t) composed into `affineNow`;
// the picture on screen is drawn with affineNow after undoing the transform in effect
// when it was requested, so the previous picture follows the pointer (shifted and
// scaled) until the new one arrives. Requests that are no longer needed are aborted.

import { PROJECTIONS, Wcs, fieldWcs, formatDec, formatRa, parseRaDec } from "./wcs.js";

const COLORMAPS = [
  "gray", "gray_r", "viridis", "magma", "inferno", "plasma", "cividis", "afmhot", "hot", "bone",
  "cubehelix", "twilight", "turbo", "coolwarm", "RdBu_r", "Spectral_r", "Blues_r",
];
// Wider than these and the projection folds or diverges (TAN at 180, SIN at the limb).
const MAX_FOV = { TAN: 150, SIN: 180, ARC: 360, STG: 300, ZEA: 360, CAR: 360, MER: 360, AIT: 360, MOL: 360 };
// A survey suggesting a first field wider than this starts in an all-sky projection (unless the
// URL names one): TAN stretches the edges of a 150° field 2.7 times and cannot show more.
const WIDE_FOV = 90;
const ALLSKY_PROJECTION = "AIT";
// Where each all-sky projection maps the whole sphere [plane degrees]: semi-axes, and whether
// it is an ellipse (else a rectangle). Outside it a picture has no sky.
const SKY_EXTENT = {
  AIT: [(2 * Math.SQRT2 * 180) / Math.PI, (Math.SQRT2 * 180) / Math.PI, true],
  MOL: [(2 * Math.SQRT2 * 180) / Math.PI, (Math.SQRT2 * 180) / Math.PI, true],
  CAR: [180, 90, false],
};
const MIN_FOV = 1 / 3600; // 1 arcsec across: deeper than any configured survey
const MAX_SIDE = 2048; // the canvas is rendered at most this large (the service also has its limits)
const DEBOUNCE_MS = 80; // a pause in the pointer this long asks for a picture
const MAX_WAIT_MS = 400; // ... and a continuous drag asks at least this often

const $ = (id) => document.getElementById(id);
const canvas = $("sky");
const ctx = canvas.getContext("2d");

const DEFAULT_VIEW = {
  ra: 266.405,
  dec: -28.936,
  fovDeg: 40,
  projection: "TAN",
  survey: "",
  epoch: "",
  colormap: "inferno",
  scale: "asinh",
  minCut: "",
  maxCut: "",
  // Layers (POST v1/composite, v1/epochs/*): the mode and what it combines.
  mode: "single",
  epochA: "",
  epochB: "",
  contour: "",
  levels: "3 5 10 20",
  levelUnit: "sigma",
  r: "",
  g: "",
  b: "",
};
const MODES = ["single", "difference", "blink", "contours", "rgb"];

const state = {
  view: { ...DEFAULT_VIEW },
  width: 0,
  height: 0,
  surveys: [], // GET v1/surveys entries
  groups: [], // entries grouped by shared name/alias (epochs of one survey)
};

// -- screen transforms -----------------------------------------------------------------------

const IDENTITY = { s: 1, tx: 0, ty: 0 };
let affineNow = { ...IDENTITY };
const then = (a, b) => ({ s: b.s * a.s, tx: b.s * a.tx + b.tx, ty: b.s * a.ty + b.ty }); // a, then b
const invert = (a) => ({ s: 1 / a.s, tx: -a.tx / a.s, ty: -a.ty / a.s });
const apply = (a, x, y) => [a.s * x + a.tx, a.s * y + a.ty];

// -- the picture on screen and the request in flight --------------------------------------------

let shown = null; // {bitmap, wcs, affine, key, stale}
let inflight = null; // {controller, seq, key, affine, t0}
let seq = 0;
let timer = 0;
let firstChangeAt = 0;
let pointer = null; // last pointer position over the canvas [CSS pixels]
let pendingEnd = null; // {t, key}: end of an interaction, for the pan-to-picture time
const events = []; // diagnostics: requests, draws, interaction ends (read by tests and benchmarks)
const note = (e) => {
  events.push({ ...e, t: performance.now() });
  if (events.length > 500) events.splice(0, events.length - 500);
};

/** What to ask for the current view: the endpoint and its JSON body. */
function requestSpec() {
  const v = state.view;
  const field = {
    ra: round(v.ra, 8),
    dec: round(v.dec, 8),
    fovDeg: round(v.fovDeg, 10),
    width: state.width,
    height: state.height,
    projection: v.projection,
  };
  const cuts = {};
  const min = cutValue(v.minCut);
  const max = cutValue(v.maxCut);
  if (min !== null) cuts.minCut = min;
  if (max !== null) cuts.maxCut = max;
  const group = groupOf(v.survey);
  const epochs = v.epochA && v.epochB ? { epochs: [v.epochA, v.epochB] } : {};
  switch (v.mode) {
    case "difference":
      return {
        path: "v1/epochs/difference",
        body: { ...field, survey: group ? group.label : v.survey, ...epochs, format: "png", scale: v.scale, ...cuts },
      };
    case "blink":
      return {
        path: "v1/epochs/blink",
        body: {
          ...field, survey: group ? group.label : v.survey, ...epochs, format: "apng", frameMs: 700,
          colormap: v.colormap, scale: v.scale, ...cuts,
        },
      };
    case "contours": {
      const levels = String(v.levels).trim().split(/[\s,]+/).filter(Boolean).map((x) => Number(x));
      return {
        path: "v1/composite",
        body: {
          ...field, mode: "contours", format: "png",
          layers: [layerOf(v.survey, { colormap: v.colormap, scale: v.scale, ...cuts }), layerOf(v.contour || v.survey)],
          contours: { levels, levelUnit: v.levelUnit, color: "#7fff7f" },
        },
      };
    }
    case "rgb":
      return {
        path: "v1/composite",
        body: { ...field, mode: "rgb", format: "png", layers: [v.r, v.g, v.b].map((n) => layerOf(n || v.survey, { scale: v.scale })) },
      };
    default:
      return { path: "v1/preview", body: requestBody() };
  }
}

/** A layer of a composite: a configured survey (by its unique name) and its epoch. */
function layerOf(name, display = {}) {
  const entry = entryOf(name);
  const layer = { survey: name, ...display };
  if (entry && entry.epoch) layer.epoch = entry.epoch;
  return layer;
}

const keyOf = (spec) => `${spec.path} ${JSON.stringify(spec.body)}`;

function requestBody() {
  const v = state.view;
  const body = {
    ra: round(v.ra, 8),
    dec: round(v.dec, 8),
    fovDeg: round(v.fovDeg, 10),
    width: state.width,
    height: state.height,
    format: "png",
    projection: v.projection,
    colormap: v.colormap,
    scale: v.scale,
  };
  if (v.survey) body.survey = v.survey;
  if (v.epoch) body.epoch = v.epoch;
  const min = cutValue(v.minCut);
  const max = cutValue(v.maxCut);
  if (min !== null) body.minCut = min;
  if (max !== null) body.maxCut = max;
  return body;
}

const round = (x, places) => Math.round(x * 10 ** places) / 10 ** places;

function cutValue(text) {
  const s = String(text || "").trim();
  if (!s) return null;
  const x = Number(s);
  return Number.isFinite(x) ? x : s; // "99.5%", or something the service will explain
}

/** Ask for a picture of the current view (soon, or now), aborting one no longer needed. */
function schedule(now = false) {
  const t = performance.now();
  if (!timer) firstChangeAt = t;
  clearTimeout(timer);
  const wait = now ? 0 : Math.max(0, Math.min(DEBOUNCE_MS, firstChangeAt + MAX_WAIT_MS - t));
  timer = setTimeout(() => {
    timer = 0;
    request();
  }, wait);
}

async function request() {
  if (!state.width || !state.height) return;
  const spec = requestSpec();
  const { body } = spec;
  const key = keyOf(spec);
  if (inflight && inflight.key === key) return; // already on its way
  if (!inflight && shown && shown.key === key && !shown.stale) return; // already shown
  if (inflight) inflight.controller.abort();
  const controller = new AbortController();
  const mine = { controller, seq: ++seq, key, affine: { ...affineNow }, t0: performance.now() };
  inflight = mine;
  note({ type: "request", seq: mine.seq, path: spec.path, body });
  $("busy").hidden = false;
  try {
    const response = await fetch(spec.path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await describeError(response));
    const header = response.headers.get("X-WCS");
    if (!header) throw new Error("the picture came without its X-WCS header");
    const wcs = new Wcs(JSON.parse(header));
    const blob = await response.blob();
    // An animation (blink) plays in an <img>; a still picture is drawn on the canvas.
    const animated = spec.path.endsWith("/blink");
    const bitmap = animated ? null : await createImageBitmap(blob);
    if (inflight !== mine) {
      if (bitmap) bitmap.close();
      return;
    }
    inflight = null;
    forget(shown);
    const anim = animated ? URL.createObjectURL(blob) : null;
    shown = { bitmap, anim, wcs, affine: mine.affine, key, stale: false };
    showError(null);
    draw();
    note({ type: "draw", seq: mine.seq, requestMs: performance.now() - mine.t0 });
    if (pendingEnd && pendingEnd.key === key) {
      note({ type: "pan-to-picture", ms: performance.now() - pendingEnd.t });
      pendingEnd = null;
    }
  } catch (err) {
    if (err.name === "AbortError") return;
    if (inflight === mine) {
      inflight = null;
      note({ type: "error", seq: mine.seq, message: String(err.message || err) });
      showError(err.message || String(err));
    }
  } finally {
    if (!inflight) $("busy").hidden = true;
  }
}

function forget(picture) {
  if (!picture) return;
  if (picture.bitmap) picture.bitmap.close();
  if (picture.anim) URL.revokeObjectURL(picture.anim);
}

/** The API's {error, detail} as one readable line (pydantic's field errors listed). */
async function describeError(response) {
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON: say what came */
  }
  if (body && body.error) {
    let detail = body.detail;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
    } else if (detail && typeof detail !== "string") {
      detail = JSON.stringify(detail);
    }
    return `${body.error} (HTTP ${response.status})${detail ? `: ${detail}` : ""}`;
  }
  return `HTTP ${response.status} ${response.statusText}: ${text.slice(0, 200) || "no detail"}`;
}

function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message || "";
}

// -- drawing -------------------------------------------------------------------------------------

function draw() {
  const dpr = window.devicePixelRatio || 1;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, state.width, state.height); // the page behind is black
  const img = $("anim");
  img.hidden = !(shown && shown.anim);
  if (shown) {
    const t = screenOfShown();
    if (shown.anim) {
      if (img.getAttribute("src") !== shown.anim) img.src = shown.anim;
      img.style.opacity = shown.stale ? "0.35" : "1";
      img.style.transform = `matrix(${t.s}, 0, 0, ${t.s}, ${t.tx}, ${t.ty})`;
    } else {
      ctx.globalAlpha = shown.stale ? 0.35 : 1;
      ctx.imageSmoothingEnabled = t.s !== 1;
      ctx.setTransform(dpr * t.s, 0, 0, dpr * t.s, dpr * t.tx, dpr * t.ty);
      ctx.drawImage(shown.bitmap, 0, 0);
      ctx.globalAlpha = 1;
    }
  }
  drawScaleBar();
  drawReadout();
}

const screenOfShown = () => then(invert(shown.affine), affineNow);

const NICE = [
  1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 18000, 36000, 72000, 108000, 162000, 216000,
  324000,
].map((arcsec) => arcsec / 3600);

function drawScaleBar() {
  let degPerPixel = state.view.fovDeg / Math.max(state.width, state.height);
  if (shown && !shown.stale) degPerPixel = shown.wcs.scaleDeg / screenOfShown().s;
  const maxPx = Math.min(160, state.width / 4);
  let length = NICE[0];
  for (const n of NICE) if (n / degPerPixel <= maxPx) length = n;
  $("scalebar").querySelector(".bar").style.width = `${Math.round(length / degPerPixel)}px`;
  $("scalebar").querySelector(".label").textContent = formatAngle(length);
  $("fov-out").textContent = formatAngle(state.view.fovDeg);
}

function formatAngle(deg) {
  if (deg >= 1) return `${+deg.toFixed(deg < 10 ? 2 : 1)}°`;
  if (deg * 60 >= 1) return `${+(deg * 60).toFixed(1)}′`;
  return `${+(deg * 3600).toFixed(1)}″`;
}

function drawReadout() {
  let sky = null;
  if (pointer && shown && !shown.stale) {
    const [u, v] = apply(invert(screenOfShown()), pointer[0], pointer[1]);
    sky = shown.wcs.canvasToSky(u, v);
  }
  if (!sky) {
    $("radec-sexa").textContent = "–";
    $("radec-deg").textContent = "–";
    $("lb-deg").textContent = "–";
    return;
  }
  const [ra, dec] = sky.radec;
  const [l, b] = sky.lb;
  $("radec-sexa").textContent = `${formatRa(ra)} ${formatDec(dec)}`;
  $("radec-deg").textContent = `${ra.toFixed(5)}° ${dec >= 0 ? "+" : ""}${dec.toFixed(5)}°`;
  $("lb-deg").textContent = `${l.toFixed(5)}° ${b >= 0 ? "+" : ""}${b.toFixed(5)}°`;
}

// -- view changes ------------------------------------------------------------------------------

const currentWcs = () => fieldWcs({ ...state.view, width: state.width, height: state.height });

/** Move the sky with the pointer by (dx, dy) CSS pixels. */
function pan(dx, dy) {
  if (!dx && !dy) return;
  const centre = currentWcs().canvasToWorld(state.width / 2 - dx, state.height / 2 - dy);
  if (!centre) return; // off the projection's edge: stay
  [state.view.ra, state.view.dec] = centre;
  affineNow = then(affineNow, { s: 1, tx: dx, ty: dy });
  changed();
}

/** Zoom by factor k (> 1 zooms in) keeping the sky under (px, py) in place. */
function zoomAt(px, py, k) {
  const v = state.view;
  const fov = Math.min(MAX_FOV[v.projection] || 360, Math.max(MIN_FOV, v.fovDeg / k));
  k = v.fovDeg / fov;
  if (Math.abs(k - 1) < 1e-9) return;
  const cx = state.width / 2;
  const cy = state.height / 2;
  const before = currentWcs();
  const held = before.canvasToWorld(px, py);
  const centre = before.canvasToWorld(px + (cx - px) / k, py + (cy - py) / k);
  if (centre) [v.ra, v.dec] = centre;
  v.fovDeg = fov;
  if (held && centre) holdUnder(px, py, held);
  affineNow = then(affineNow, { s: k, tx: px * (1 - k), ty: py * (1 - k) });
  changed();
}

/**
 * Nudge the view's centre so that the sky position `target` [deg] is exactly under the
 * canvas point (px, py): the pixel-space zoom is exact only on a flat sky. Each step turns
 * the centre by the rotation taking where (px, py) points now onto the target.
 */
function holdUnder(px, py, target) {
  const v = state.view;
  const unit = ([lon, lat]) => {
    const a = (lon * Math.PI) / 180;
    const b = (lat * Math.PI) / 180;
    return [Math.cos(b) * Math.cos(a), Math.cos(b) * Math.sin(a), Math.sin(b)];
  };
  const t = unit(target);
  for (let i = 0; i < 4; i++) {
    const now = currentWcs().canvasToWorld(px, py);
    if (!now) return;
    const s = unit(now);
    const axis = [s[1] * t[2] - s[2] * t[1], s[2] * t[0] - s[0] * t[2], s[0] * t[1] - s[1] * t[0]];
    const sin = Math.hypot(...axis);
    if (sin < 1e-12) return;
    const cos = s[0] * t[0] + s[1] * t[1] + s[2] * t[2];
    const k = axis.map((x) => x / sin);
    const c = unit([v.ra, v.dec]);
    const kc = k[0] * c[0] + k[1] * c[1] + k[2] * c[2];
    const kxc = [k[1] * c[2] - k[2] * c[1], k[2] * c[0] - k[0] * c[2], k[0] * c[1] - k[1] * c[0]];
    const r = c.map((x, j) => x * cos + kxc[j] * sin + k[j] * kc * (1 - cos)); // Rodrigues
    v.ra = ((Math.atan2(r[1], r[0]) * 180) / Math.PI + 360) % 360;
    v.dec = (Math.asin(Math.max(-1, Math.min(1, r[2]))) * 180) / Math.PI;
  }
}

function changed(now = false) {
  writeHash();
  draw();
  schedule(now);
}

/** A view that the shown picture cannot be moved into (new centre, projection): dim it. */
function jumped() {
  if (shown) shown.stale = true;
  changed(true);
}

function endInteraction() {
  const key = keyOf(requestSpec());
  pendingEnd = { t: performance.now(), key };
  note({ type: "interaction-end", key });
  schedule(true);
}

// -- pointer, wheel, keys ------------------------------------------------------------------------

const touches = new Map();
let dragged = false;

canvas.addEventListener("pointerdown", (e) => {
  canvas.setPointerCapture(e.pointerId);
  canvas.focus();
  touches.set(e.pointerId, [e.offsetX, e.offsetY]);
  dragged = false;
  canvas.classList.add("dragging");
});

canvas.addEventListener("pointermove", (e) => {
  pointer = [e.offsetX, e.offsetY];
  const last = touches.get(e.pointerId);
  if (!last) {
    drawReadout();
    return;
  }
  if (touches.size === 2) {
    // Pinch: zoom by the change of the fingers' distance about their midpoint, pan with it.
    const [a, b] = [...touches.values()];
    const other = a === last ? b : a;
    const before = Math.hypot(last[0] - other[0], last[1] - other[1]);
    const after = Math.hypot(e.offsetX - other[0], e.offsetY - other[1]);
    touches.set(e.pointerId, [e.offsetX, e.offsetY]);
    if (before > 0 && after > 0) zoomAt((e.offsetX + other[0]) / 2, (e.offsetY + other[1]) / 2, after / before);
  } else {
    touches.set(e.pointerId, [e.offsetX, e.offsetY]);
    pan(e.offsetX - last[0], e.offsetY - last[1]);
  }
  dragged = true;
});

function pointerEnd(e) {
  if (!touches.delete(e.pointerId)) return;
  if (touches.size === 0) {
    canvas.classList.remove("dragging");
    if (dragged) endInteraction();
  }
}
canvas.addEventListener("pointerup", pointerEnd);
canvas.addEventListener("pointercancel", pointerEnd);
canvas.addEventListener("pointerleave", () => {
  pointer = null;
  drawReadout();
});

canvas.addEventListener(
  "wheel",
  (e) => {
    e.preventDefault();
    const lines = e.deltaMode === 1 ? 40 : e.deltaMode === 2 ? 800 : 1;
    zoomAt(e.offsetX, e.offsetY, Math.exp(-e.deltaY * lines * 0.0015));
  },
  { passive: false },
);

window.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  const step = Math.round(Math.min(state.width, state.height) / 8);
  const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
  if (moves[e.key]) {
    pan(...moves[e.key]);
  } else if (e.key === "+" || e.key === "=") {
    zoomAt(state.width / 2, state.height / 2, 1.25);
  } else if (e.key === "-" || e.key === "_") {
    zoomAt(state.width / 2, state.height / 2, 1 / 1.25);
  } else {
    return;
  }
  e.preventDefault();
});

// -- size ----------------------------------------------------------------------------------------

/** The canvas size [CSS pixels]: the window's, at most MAX_SIDE. */
const viewportSize = () => [
  Math.max(1, Math.min(MAX_SIDE, window.innerWidth)),
  Math.max(1, Math.min(MAX_SIDE, window.innerHeight)),
];

/**
 * The widest field of view [deg], at most `fovDeg`, whose `projection` picture of w x h pixels
 * has sky in every pixel (its corners inside the projection's sky, with 1 % to spare). TAN and
 * the other zenithal projections fill any window below MAX_FOV.
 */
function fillingFov(projection, fovDeg, w, h) {
  const extent = SKY_EXTENT[projection];
  if (!extent) return fovDeg;
  const [a, b, ellipse] = extent;
  // Half the picture's width and height [plane degrees] per degree of field of view.
  const hw = w / 2 / Math.max(w, h);
  const hh = h / 2 / Math.max(w, h);
  const widest = ellipse ? 1 / Math.hypot(hw / a, hh / b) : Math.min(a / hw, b / hh);
  return Math.min(fovDeg, 0.99 * widest);
}

function resize() {
  const [w, h] = viewportSize();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  canvas.style.width = `${w}px`;
  canvas.style.height = `${h}px`;
  if (state.width && state.height) {
    // Same pixel scale and centre: the shown picture stays put, anchored on the centre.
    state.view.fovDeg *= Math.max(w, h) / Math.max(state.width, state.height);
    affineNow = then(affineNow, { s: 1, tx: (w - state.width) / 2, ty: (h - state.height) / 2 });
  }
  state.width = w;
  state.height = h;
  changed();
}

// -- the URL: a shareable view -------------------------------------------------------------------

const HASH_KEYS = {
  ra: "ra", dec: "dec", fov: "fovDeg", proj: "projection", survey: "survey", epoch: "epoch",
  cmap: "colormap", stretch: "scale", min: "minCut", max: "maxCut",
  mode: "mode", ea: "epochA", eb: "epochB", cs: "contour", lv: "levels", lu: "levelUnit", r: "r", g: "g", b: "b",
};

function writeHash() {
  const v = state.view;
  const p = new URLSearchParams();
  p.set("ra", v.ra.toFixed(6));
  p.set("dec", v.dec.toFixed(6));
  p.set("fov", String(+v.fovDeg.toPrecision(7)));
  for (const [k, field] of Object.entries(HASH_KEYS)) {
    if (["ra", "dec", "fov"].includes(k)) continue;
    if (v[field] && v[field] !== DEFAULT_VIEW[field]) p.set(k, v[field]);
    else if (v[field] && ["survey", "colormap", "scale", "projection"].includes(field)) p.set(k, v[field]);
  }
  history.replaceState(null, "", `#${p.toString()}`);
}

/** The view a URL's hash describes (fields it does not name take their defaults). */
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const v = { ...DEFAULT_VIEW };
  for (const [k, field] of Object.entries(HASH_KEYS)) {
    if (!p.has(k)) continue;
    const raw = p.get(k);
    if (["ra", "dec", "fovDeg"].includes(field)) {
      const x = Number(raw);
      if (Number.isFinite(x)) v[field] = x;
    } else {
      v[field] = raw;
    }
  }
  v.ra = ((v.ra % 360) + 360) % 360;
  v.dec = Math.max(-90, Math.min(90, v.dec));
  if (!PROJECTIONS.includes(v.projection)) v.projection = "TAN";
  if (!MODES.includes(v.mode)) v.mode = "single";
  v.fovDeg = Math.min(MAX_FOV[v.projection], Math.max(MIN_FOV, v.fovDeg));
  return v;
}

window.addEventListener("hashchange", () => {
  state.view = readHash();
  resolveSurvey();
  syncControls();
  jumped();
});

// -- controls ------------------------------------------------------------------------------------

function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label ?? value;
  select.append(o);
}

/** Surveys sharing a name or an alias are epochs of one survey (as the API resolves them). */
function groupSurveys(entries) {
  const groups = [];
  for (const entry of entries) {
    const names = new Set([entry.name, ...(entry.aliases || [])]);
    const group = groups.find((g) => g.entries.some((o) => [o.name, ...(o.aliases || [])].some((n) => names.has(n))));
    if (group) group.entries.push(entry);
    else groups.push({ entries: [entry] });
  }
  for (const g of groups) {
    const shared = (g.entries[0].aliases || []).find((a) => g.entries.every((o) => (o.aliases || []).includes(a)));
    g.label = g.entries.length > 1 && shared ? shared : g.entries[0].name;
    g.title = g.entries[0].title || g.label;
  }
  return groups;
}

const groupOf = (name) => state.groups.find((g) => g.entries.some((e) => e.name === name));
const entryOf = (name) => state.surveys.find((e) => e.name === name);

function fillSurveys() {
  const select = $("survey");
  select.textContent = "";
  state.groups.forEach((g, i) => option(select, String(i), g.entries[0].available === false ? `${g.label} (unavailable)` : g.label));
  for (const id of ["contour-survey", "rgb-r", "rgb-g", "rgb-b"]) {
    $(id).textContent = "";
    for (const e of state.surveys) option($(id), e.name, e.epoch ? `${e.name} (${e.epoch})` : e.name);
  }
  syncControls();
}

function syncControls() {
  const v = state.view;
  const group = groupOf(v.survey) || state.groups[0];
  if (group) {
    $("survey").value = String(state.groups.indexOf(group));
    $("survey").title = group.title;
    const epochs = group.entries.filter((e) => e.epoch);
    $("epoch-row").hidden = epochs.length === 0;
    const sel = $("epoch");
    sel.textContent = "";
    for (const e of group.entries) option(sel, e.name, e.epoch || "(none)");
    sel.value = entryOf(v.survey) ? v.survey : group.entries[0].name;
    const entry = entryOf(sel.value);
    $("colormap").disabled = Boolean(entry && entry.colour);
    $("colormap").title = entry && entry.colour ? "a colour survey keeps its own colours" : "";
  }
  fillLayerDefaults();
  const epochs = (group ? group.entries : []).filter((e) => e.epoch).map((e) => e.epoch);
  for (const id of ["epoch-a", "epoch-b"]) {
    $(id).textContent = "";
    for (const e of epochs) option($(id), e);
  }
  $("mode").value = v.mode;
  $("epoch-a").value = v.epochA;
  $("epoch-b").value = v.epochB;
  $("contour-survey").value = v.contour;
  $("levels").value = v.levels;
  $("level-unit").value = v.levelUnit;
  $("rgb-r").value = v.r;
  $("rgb-g").value = v.g;
  $("rgb-b").value = v.b;
  for (const el of document.querySelectorAll(".mode-opt")) el.hidden = !el.dataset.modes.split(" ").includes(v.mode);
  if (["rgb", "difference"].includes(v.mode)) {
    $("colormap").disabled = true;
    $("colormap").title = v.mode === "rgb" ? "red, green and blue come from the layers" : "the difference has a diverging colormap";
  }
  $("colormap").value = v.colormap;
  if ($("colormap").value !== v.colormap) {
    option($("colormap"), v.colormap);
    $("colormap").value = v.colormap;
  }
  $("scale").value = v.scale;
  $("projection").value = v.projection;
  $("min-cut").value = v.minCut || "";
  $("max-cut").value = v.maxCut || "";
}

/** Sensible layers for a mode the URL or the user left unsaid: the two latest epochs, other surveys. */
function fillLayerDefaults() {
  const v = state.view;
  const group = groupOf(v.survey);
  const epochs = (group ? group.entries : []).filter((e) => e.epoch).map((e) => e.epoch);
  if (!epochs.includes(v.epochA) || !epochs.includes(v.epochB)) {
    v.epochA = epochs.length >= 2 ? epochs[epochs.length - 2] : "";
    v.epochB = epochs.length >= 2 ? epochs[epochs.length - 1] : "";
  }
  const names = state.surveys.map((e) => e.name);
  // Layers must be single-band: surveys with FITS tiles, other surveys first.
  const band = state.surveys.filter((e) => !e.colour && e.tileFormat === "fits").map((e) => e.name);
  const inGroup = (n) => Boolean(group && group.entries.some((e) => e.name === n));
  const others = band.filter((n) => !inGroup(n));
  if (!names.includes(v.contour)) v.contour = others[0] || v.survey;
  const three = [...new Set([v.survey, ...others, ...band]), v.survey, v.survey].slice(0, 3);
  if (!names.includes(v.r)) v.r = three[0] || "";
  if (!names.includes(v.g)) v.g = three[1] || v.r;
  if (!names.includes(v.b)) v.b = three[2] || v.g;
}

function pickSurvey(name) {
  const entry = entryOf(name);
  state.view.survey = name;
  state.view.epoch = entry && entry.epoch ? entry.epoch : "";
  syncControls();
  changed(true);
}

function validCut(text) {
  const s = text.trim();
  if (!s) return true;
  const body = s.endsWith("%") ? s.slice(0, -1) : s;
  const x = Number(body);
  return body.trim() !== "" && Number.isFinite(x) && (!s.endsWith("%") || (x >= 0 && x <= 100));
}

function setupControls() {
  for (const c of COLORMAPS) option($("colormap"), c);
  for (const p of PROJECTIONS) option($("projection"), p);
  $("survey").addEventListener("change", (e) => pickSurvey(state.groups[Number(e.target.value)].entries[0].name));
  $("epoch").addEventListener("change", (e) => pickSurvey(e.target.value));
  $("mode").addEventListener("change", (e) => {
    state.view.mode = e.target.value;
    syncControls();
    jumped();
  });
  const layerFields = [
    ["epoch-a", "epochA"], ["epoch-b", "epochB"], ["contour-survey", "contour"], ["level-unit", "levelUnit"],
    ["rgb-r", "r"], ["rgb-g", "g"], ["rgb-b", "b"],
  ];
  for (const [id, field] of layerFields) {
    $(id).addEventListener("change", (e) => {
      state.view[field] = e.target.value;
      changed(true);
    });
  }
  $("levels").addEventListener("change", (e) => {
    const levels = e.target.value.trim().split(/[\s,]+/).filter(Boolean);
    const ok = levels.length > 0 && levels.every((x) => Number.isFinite(Number(x)));
    e.target.classList.toggle("invalid", !ok);
    if (!ok) {
      showError(`contour levels: "${e.target.value}" is not a list of numbers`);
      return;
    }
    state.view.levels = levels.join(" ");
    changed(true);
  });
  $("colormap").addEventListener("change", (e) => {
    state.view.colormap = e.target.value;
    changed(true);
  });
  $("scale").addEventListener("change", (e) => {
    state.view.scale = e.target.value;
    changed(true);
  });
  $("projection").addEventListener("change", (e) => {
    state.view.projection = e.target.value;
    state.view.fovDeg = Math.min(MAX_FOV[e.target.value], state.view.fovDeg);
    jumped();
  });
  for (const [id, field] of [["min-cut", "minCut"], ["max-cut", "maxCut"]]) {
    $(id).addEventListener("change", (e) => {
      const ok = validCut(e.target.value);
      e.target.classList.toggle("invalid", !ok);
      if (!ok) {
        showError(`${field}: "${e.target.value}" is neither a number in data units nor a percentile like 99.5%`);
        return;
      }
      state.view[field] = e.target.value.trim();
      changed(true);
    });
  }
  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("goto");
    try {
      [state.view.ra, state.view.dec] = parseRaDec(input.value);
    } catch (err) {
      input.classList.add("invalid");
      showError(err.message);
      return;
    }
    input.classList.remove("invalid");
    jumped();
  });
  $("toggle").addEventListener("click", () => $("controls").classList.toggle("collapsed"));
  $("share").addEventListener("click", async () => {
    writeHash();
    try {
      await navigator.clipboard.writeText(location.href);
      $("share").textContent = "Link copied";
    } catch {
      window.prompt("Copy this link:", location.href);
    }
    setTimeout(() => ($("share").textContent = "Copy link"), 1500);
  });
}

/**
 * The view's survey as configured: a name the catalogue does not have falls back to the
 * default; the epoch is the named survey's (names are unique, so the URL need not say it).
 * A URL without a position starts where the survey's properties suggest (hips_initial_*); a
 * field wider than WIDE_FOV in AIT unless the URL names a projection, never wider than fills
 * the window (no empty band around the sky).
 */
function resolveSurvey() {
  const v = state.view;
  if (!state.surveys.length) return;
  if (v.survey && !entryOf(v.survey)) {
    showError(`no survey "${v.survey}" here; showing the default`);
    v.survey = "";
  }
  const entry = entryOf(v.survey) || state.surveys[0];
  v.survey = entry.name;
  v.epoch = entry.epoch || "";
  const p = new URLSearchParams(location.hash.slice(1));
  if (!p.has("ra") && !p.has("dec") && entry.initialRa != null && entry.initialDec != null) {
    v.ra = entry.initialRa;
    v.dec = entry.initialDec;
    if (!p.has("fov") && entry.initialFovDeg) {
      // A wide first field is shown whole in an all-sky projection, as wide as fills the window.
      if (!p.has("proj") && entry.initialFovDeg > WIDE_FOV) v.projection = ALLSKY_PROJECTION;
      const [w, h] = viewportSize();
      v.fovDeg = fillingFov(v.projection, Math.min(MAX_FOV[v.projection], entry.initialFovDeg), w, h);
    }
  }
}

async function loadSurveys() {
  try {
    const response = await fetch("v1/surveys");
    if (!response.ok) throw new Error(await describeError(response));
    state.surveys = (await response.json()).surveys;
  } catch (err) {
    showError(`cannot list the surveys: ${err.message || err}`);
    state.surveys = [];
  }
  state.groups = groupSurveys(state.surveys);
  resolveSurvey();
  fillSurveys();
}

// -- start ---------------------------------------------------------------------------------------

window.skyViewer = {
  state,
  events,
  /** True when no picture is pending and the shown one is of the current view. */
  idle: () => !timer && !inflight && Boolean(shown) && shown.key === keyOf(requestSpec()),
};

setupControls();
state.view = readHash();
window.addEventListener("resize", resize);
loadSurveys().then(() => {
  syncControls();
  resize();
  schedule(true);
});
