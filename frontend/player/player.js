// The one-file player's page: controls, pointer and keys around the CA of ca.js. The model comes
// from the JSON block the builder (backend/exports/player.py) embeds; nothing is fetched.
//
// For scripts and tests, `window.ncaPlayer` drives it: step(n), reset(seed), erase(x, y, r),
// plant(x, y), pause(), play(), setAngle(degrees), stats(), state(); `backend` says which path runs
// ('webgl2' or 'js', also in <html data-backend>), `reason` why WebGL2 was not used.

import { createCA, createViewer, decodeModel } from './ca.js';

const $ = (id) => document.getElementById(id);
const model = decodeModel(JSON.parse($('nca-model').textContent));
const prefer = new URLSearchParams(location.search).get('backend') === 'js' ? 'js' : 'auto';
const canvas = $('ca');
const ca = createCA(canvas, model, prefer);
const [H, W] = model.grid;
canvas.style.aspectRatio = `${W} / ${H}`;

let steps = 0;
let angle = 0; // radians
let seed = 1;

document.documentElement.dataset.backend = ca.backend;
if (ca.reason) document.documentElement.dataset.backendReason = ca.reason;
document.title = `${model.name} · Growing NCA player`;
$('name').textContent = model.name;
$('about').textContent = [
  model.experiment ? `${model.experiment} experiment` : null,
  model.iterations ? `${model.iterations} training iterations` : null,
  `${W} × ${H} cells`,
].filter(Boolean).join(' · ');
$('backend').textContent = ca.backend === 'webgl2' ? 'WebGL2' : `plain JavaScript (${ca.reason})`;

function show() {
  ca.draw();
  $('step-count').textContent = `step ${steps}`;
  $('play').textContent = viewer.paused ? 'Play' : 'Pause';
}

function step(n = 1) {
  for (let i = 0; i < n; i++) ca.step(angle);
  steps += n;
  show();
}

function reset(newSeed = seed + 1) {
  seed = newSeed;
  ca.reset(seed);
  steps = 0;
  show();
}

function setAngle(degrees) {
  angle = (degrees * Math.PI) / 180;
  $('angle').value = degrees;
  $('angle-out').textContent = `${Math.round(degrees)}°`;
}

/** Alive fraction (alpha > 0.1) and mean colour on white over the grid, as the core measures them. */
function stats() {
  const x = ca.readState();
  const C = model.channels;
  let alive = 0;
  const rgb = [0, 0, 0];
  for (let cell = 0; cell < W * H; cell++) {
    const a = x[cell * C + 3];
    if (a > 0.1) alive++;
    const clamped = Math.min(Math.max(a, 0), 1);
    for (let c = 0; c < 3; c++) rgb[c] += Math.min(Math.max(1 - clamped + x[cell * C + c], 0), 1);
  }
  return { steps, alive: alive / (W * H), rgb: rgb.map((v) => v / (W * H)) };
}

// --- Pointer, keys and pause (the viewer of ca.js, as in the Watch view); the controls -----------------

const viewer = createViewer(canvas, {
  grid: () => [W, H],
  actions: {
    erase: (x, y) => { ca.erase(Math.floor(x), Math.floor(y), Number($('eraser').value)); show(); },
    plant: (x, y) => { ca.plant(x, y); show(); },
    pause: show,
    step: () => step(1),
    reset: () => reset(),
  },
  showPaused: show,
});

$('play').addEventListener('click', () => viewer.togglePause());
$('step').addEventListener('click', () => viewer.step());
$('reset').addEventListener('click', () => reset());
$('speed').addEventListener('input', () => { $('speed-out').textContent = $('speed').value; });
$('angle').addEventListener('input', () => setAngle(Number($('angle').value)));
$('eraser').addEventListener('input', () => { $('eraser-out').textContent = $('eraser').value; });
$('eraser').value = Math.max(2, Math.round(Math.min(W, H) / 10));
$('eraser-out').textContent = $('eraser').value;

function frame() {
  if (!viewer.paused) step(Number($('speed').value));
  requestAnimationFrame(frame);
}

window.ncaPlayer = {
  backend: ca.backend,
  reason: ca.reason,
  width: W,
  height: H,
  get steps() { return steps; },
  get paused() { return viewer.paused; },
  step,
  reset,
  pause: () => viewer.setPaused(true),
  play: () => viewer.setPaused(false),
  setAngle,
  erase: (x, y, r) => { ca.erase(x, y, r); show(); },
  plant: (x, y) => { ca.plant(x, y); show(); },
  stats,
  state: () => Array.from(ca.readState()), // H*W*C floats, row by row, channels last
};
reset(seed);
document.documentElement.dataset.ready = 'true';
requestAnimationFrame(frame);
