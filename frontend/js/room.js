// The room page (room.html?code=<CODE>[#host=<token>]): everyone who opens it sees one CA and can erase
// and plant seeds in it; the host (whose link carries the host token after the #: never in a request line,
// sent only inside the stream as its first command) also pauses, resets, changes speed, rotation and
// model, shows the QR code and closes the room.
// Protocol: docs/stream-protocol.md, "Rooms".

import { getConfig, getModel, getRoom, listModels } from './api.js';
import { drawFrame } from './pixels.js';
import { StreamClient, streamBase } from './stream.js';

const CANVAS_SIDE = 576;
const EDIT_EVERY_MS = 100; // at most 10 edits a second while dragging: the server's default rate
const DOUBLE_TAP_MS = 350;
const DOUBLE_TAP_PX = 24;
const STROKE_MS = 1200; // how long another participant's stroke stays highlighted
const STATE_TEXT = { connecting: 'connecting…', open: 'live', retrying: 'reconnecting…', closed: 'closed', idle: 'not connected' };

const $ = (id) => document.getElementById(id);

async function main() {
  const params = new URLSearchParams(location.search);
  const code = (params.get('code') || '').trim();
  const hostToken = new URLSearchParams(location.hash.replace(/^#/, '')).get('host') || '';
  if (!code) return showJoin('', '');
  let room;
  try {
    room = await getRoom(code);
  } catch (error) {
    return showJoin(error.message, code);
  }
  let config = {};
  try {
    config = await getConfig();
  } catch {
    // the page's own origin is where the stream is (the proxy routes /ws/stream)
  }
  enterRoom(room, hostToken, streamBase(config));
}

function showJoin(message, code) {
  $('join').hidden = false;
  $('code-input').value = code;
  $('join-error').hidden = !message;
  $('join-error').textContent = message;
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const typed = $('code-input').value.replace(/[^0-9a-z]/gi, '').toUpperCase();
    if (typed) location.search = `?code=${encodeURIComponent(typed)}`;
  });
  $('code-input').focus();
  document.body.dataset.ready = 'true';
}

function enterRoom(room, hostToken, base) {
  const canvas = $('room-canvas');
  const strokesCanvas = $('room-strokes');
  const offscreen = document.createElement('canvas');
  let size = [0, 0];
  let latest = null;
  let me = 0;
  let paused = false;
  const strokes = [];

  $('room').hidden = false;
  $('room-title').hidden = false;
  $('room-code').textContent = room.code;
  document.title = `Room ${room.code} · Growing NCA studio`;

  const say = (text) => { $('room-status').textContent = text; };
  const client = new StreamClient(base, () => ({ room: room.id }), {
    onFrame(frame) {
      if (latest === null) requestAnimationFrame(draw);
      latest = frame;
    },
    onEvent,
    onState(state, detail) {
      $('room-connection').dataset.state = state;
      $('room-connection').textContent = STATE_TEXT[state] || state;
      if (detail) say(state === 'closed' ? `The room is over: ${detail}.` : `${detail}.`);
      else if (state === 'open') say('');
      if (state === 'open' && hostToken) client.send({ cmd: 'host', token: hostToken }); // on every (re)connect
    },
  });

  function onEvent(event) {
    switch (event.type) {
      case 'room':
        me = event.you;
        document.body.dataset.host = String(event.host);
        if (event.host) showHost(room, client);
        break;
      case 'participants':
        $('room-people').textContent = event.count;
        break;
      case 'strokes': // each other participant's latest erase or seed, with the frame that shows it
        for (const stroke of event.strokes) {
          if (stroke.who !== me) strokes.push({ ...stroke, at: performance.now() });
        }
        if (strokes.length) requestAnimationFrame(drawStrokes);
        break;
      case 'state':
        paused = Boolean(event.paused);
        $('host-pause').textContent = paused ? 'Play' : 'Pause';
        syncRange('host-fps', event.fps);
        syncRange('host-angle', event.angle, '°');
        break;
      case 'model':
        say(`Now playing ${event.name || event.id}.`);
        break;
      case 'throttled':
      case 'error':
        say(event.message);
        break;
      default:
        break;
    }
  }

  function draw() {
    const frame = latest;
    latest = null;
    if (!frame) return;
    drawFrame(canvas, frame, CANVAS_SIDE, offscreen);
    size = [frame.width, frame.height];
    $('room-step').textContent = frame.step;
  }

  /** Others' last strokes, as fading rings in their own colour. */
  function drawStrokes() {
    const now = performance.now();
    while (strokes.length && now - strokes[0].at > STROKE_MS) strokes.shift();
    if (strokesCanvas.width !== canvas.width || strokesCanvas.height !== canvas.height) {
      strokesCanvas.width = canvas.width;
      strokesCanvas.height = canvas.height;
    }
    const ctx = strokesCanvas.getContext('2d');
    ctx.clearRect(0, 0, strokesCanvas.width, strokesCanvas.height);
    if (!size[0]) return;
    const scale = strokesCanvas.width / size[0];
    for (const s of strokes) {
      ctx.globalAlpha = 1 - (now - s.at) / STROKE_MS;
      ctx.strokeStyle = `hsl(${(s.who * 137.5) % 360} 85% 45%)`;
      ctx.lineWidth = Math.max(2, scale / 2);
      ctx.beginPath();
      ctx.arc(s.x * scale, s.y * scale, Math.max(1.5, s.r ?? 1.5) * scale, 0, 2 * Math.PI);
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    if (strokes.length) requestAnimationFrame(drawStrokes);
  }

  // Pointer input (mouse, pen and touch alike): drag erases; a tap erases where it lands unless a
  // second tap follows soon, which plants a seed instead.
  let down = null;
  let lastEdit = 0;
  let lastTap = null;
  let tapTimer = null;
  const cell = (event) => {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) / rect.width * size[0], (event.clientY - rect.top) / rect.height * size[1]];
  };
  const radius = () => Number($('room-eraser').value);
  const erase = ([x, y]) => client.send({ cmd: 'erase', x: clamp(x, 0, size[0]), y: clamp(y, 0, size[1]), r: radius() });
  canvas.addEventListener('pointerdown', (event) => {
    if (!size[0]) return;
    canvas.setPointerCapture(event.pointerId);
    down = { x: event.clientX, y: event.clientY, moved: false };
  });
  canvas.addEventListener('pointermove', (event) => {
    if (!down) return;
    if (Math.hypot(event.clientX - down.x, event.clientY - down.y) > 6) down.moved = true;
    const now = performance.now();
    if (down.moved && now - lastEdit >= EDIT_EVERY_MS) {
      lastEdit = now;
      erase(cell(event));
    }
  });
  canvas.addEventListener('pointerup', (event) => {
    if (!down) return;
    const { moved } = down;
    down = null;
    if (moved) return;
    const here = cell(event);
    const now = performance.now();
    if (lastTap && now - lastTap.at < DOUBLE_TAP_MS
        && Math.hypot(event.clientX - lastTap.px, event.clientY - lastTap.py) < DOUBLE_TAP_PX) {
      clearTimeout(tapTimer);
      lastTap = null;
      const [x, y] = here.map(Math.floor);
      client.send({ cmd: 'seed', x: clamp(x, 0, size[0] - 1), y: clamp(y, 0, size[1] - 1) });
      return;
    }
    lastTap = { at: now, px: event.clientX, py: event.clientY };
    tapTimer = setTimeout(() => erase(here), DOUBLE_TAP_MS);
  });
  canvas.addEventListener('pointercancel', () => { down = null; });
  $('room-eraser').addEventListener('input', () => { $('room-eraser-value').textContent = radius(); });

  $('host-pause').addEventListener('click', () => client.send({ cmd: paused ? 'play' : 'pause' }));
  client.open();
  document.body.dataset.ready = 'true';
}

/** The host's panel: the QR code and link to project, and the controls that act on everyone. */
function showHost(room, client) {
  const panel = $('host-panel');
  if (!panel.hidden) return; // a reconnect
  panel.hidden = false;
  $('room-qr').src = room.qr_svg;
  $('room-link').href = room.join_url;
  $('room-link').textContent = room.join_url.replace(/\?.*$/, '');
  $('room-code-big').textContent = room.code;
  $('host-step').addEventListener('click', () => client.send({ cmd: 'step' }));
  $('host-reset').addEventListener('click', () => client.send({ cmd: 'reset' }));
  $('host-fps').addEventListener('change', (e) => client.send({ cmd: 'speed', fps: Number(e.target.value) }));
  $('host-fps').addEventListener('input', (e) => { $('host-fps-value').textContent = e.target.value; });
  $('host-angle').addEventListener('change', (e) => client.send({ cmd: 'rotate', angle: Number(e.target.value) }));
  $('host-angle').addEventListener('input', (e) => { $('host-angle-value').textContent = `${e.target.value}°`; });
  $('host-switch').addEventListener('click', () => client.send({ cmd: 'model', model: $('host-model').value }));
  $('host-close').addEventListener('click', () => client.send({ cmd: 'close' }));
  $('host-fullscreen').addEventListener('click', () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else $('room').requestFullscreen?.();
  });
  // The first page of the model list (the examples and the newest models), and the room's own if it is older.
  listModels().then(async ({ items }) => {
    const base = (room.model || '').split('@')[0];
    const own = !base || items.some((m) => m.id === base) ? null : await getModel(room.model).catch(() => null);
    const select = $('host-model');
    for (const model of own ? [own, ...items] : items) {
      select.add(new Option(model.name || model.id, model.id, false, model.id === room.model));
    }
  }).catch(() => { $('host-switch').disabled = true; });
}

function syncRange(id, value, unit = '') {
  const input = $(id);
  if (value == null || document.activeElement === input) return;
  input.value = value;
  $(`${id}-value`).textContent = `${Math.round(value)}${unit}`;
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

main();
