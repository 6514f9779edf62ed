// The Watch view: a model growing live on a canvas, fed by the stream service. Drag to erase,
// double-click to plant a seed; play/pause, step, reset, speed and rotation go to the server.

import { createViewer } from '../player/ca.js';
import { getModel, listModels } from './api.js';
import { STATUS_TEXT, isTraining, iterationText, lossText, splitRef } from './formats.js';
import { latestWins } from './latest.js';
import { createCardView } from './modelcard.js';
import { drawFrame } from './pixels.js';
import { StreamClient, streamBase } from './stream.js';
import { createTakeaway } from './takeaway.js';
import { initTimeline } from './timeline.js';

const CANVAS_SIDE = 576; // CSS pixels when the layout gives no width (hidden view)
const STATE_TEXT = {
  idle: 'not connected', connecting: 'connecting…', open: 'live', retrying: 'reconnecting…', closed: 'closed',
};

export function initWatch(config) {
  const $ = (id) => document.getElementById(id);
  const canvas = $('stream-canvas');
  const select = $('model-select');
  const searchBox = $('model-search');
  const moreModels = $('more-models');
  const modelInfo = $('model-info');
  const stepOut = $('ca-step');
  const fpsOut = $('measured-fps');
  const connection = $('connection');
  const statusLine = $('watch-status');
  const playPause = $('play-pause');
  const reconnect = $('reconnect');
  const loopBox = $('loop');
  const playMode = $('play-mode');
  const cardView = createCardView($('watch-card'));
  const takeaway = createTakeaway($('watch-takeaway'));
  const sliders = {
    fps: $('fps'), spf: $('steps-per-frame'), angle: $('angle'), eraser: $('eraser'),
  };
  const base = streamBase(config);
  const picture = createPicture(canvas, stepOut, fpsOut);
  let client = null;
  let modelId = null;
  let visible = false;
  let modelDetails = {}; // the stream's `model` event, updated by `reloaded` and `status`
  let listed = new Map(); // id -> entry of GET /api/models, for the model picker's labels
  let nextCursor = null; // the model list's next page (GET /api/models?cursor=), null at its end
  let pausedWhileHidden = false; // we paused it for a hidden tab, so we play it again on return

  const params = () => ({
    model: modelId,
    fps: sliders.fps.value,
    steps_per_frame: sliders.spf.value,
    angle: sliders.angle.value,
    loop: loopBox.checked ? 'on' : 'off',
  });
  const send = (command) => client && client.send(command);
  const say = (text) => { statusLine.textContent = text; };
  // The job's checkpoints: a slider that plays any of them (`<job id>@<iteration>`; the latest live).
  const timeline = initTimeline(select.closest('.field'), (ref) => {
    history.replaceState(null, '', `#watch/${encodeURIComponent(ref)}`);
    connect(ref);
  });

  function connect(id) {
    if (client) client.close();
    modelId = id;
    picture.clear();
    timeline.follow(id);
    if (!id) return;
    viewer.setPaused(false);
    client = new StreamClient(base, params, { onFrame: picture.offer, onEvent, onState });
    client.open();
  }

  function onState(state, detail) {
    reconnect.hidden = state !== 'closed';
    connection.dataset.state = state;
    connection.textContent = STATE_TEXT[state] || state;
    if (detail) say(`Stream: ${detail}.`);
    else if (state === 'open') say('');
    // A session that starts while the tab is hidden (opened in the background, or reconnected
    // while away) starts playing: pause it too, so the server computes nothing nobody sees.
    if (state === 'open' && document.hidden) {
      pausedWhileHidden = true;
      send({ cmd: 'pause' });
    }
  }

  function onEvent(event) {
    switch (event.type) {
      case 'model':
        modelDetails = event;
        showModel();
        if (isTraining(event.status) && !event.snapshot) {
          say(event.on_checkpoint === 'keep'
            ? 'Still training: each new checkpoint is swapped in and the cells carry on with it.'
            : 'Still training: each new checkpoint regrows the pattern from the seed with it.');
        }
        break;
      case 'reloaded': // a job wrote a new checkpoint and the stream plays it now
        modelDetails = { ...modelDetails, ...event, id: event.model };
        showModel();
        say(describeReload(event));
        timeline.refresh();
        break;
      case 'status': // the job finished (or was requeued) without a new checkpoint
        modelDetails = { ...modelDetails, ...event, id: event.model };
        showModel();
        say(describeStatus(event));
        break;
      case 'state':
        viewer.setPaused(event.paused); // the server's word: it is the one that plays
        if (typeof event.loop === 'boolean' && document.activeElement !== loopBox) loopBox.checked = event.loop;
        showPlayMode();
        syncSlider(sliders.fps, event.fps);
        syncSlider(sliders.spf, event.steps_per_frame);
        syncSlider(sliders.angle, event.angle);
        break;
      case 'error':
        say(`Stream: ${event.message}`);
        break;
      default:
        break;
    }
  }

  /** The model line, the picker's label, the card and the exports follow the model's checkpoint and status. */
  function showModel() {
    modelInfo.textContent = describeModel(modelDetails);
    const entry = listed.get(modelDetails.id);
    const option = [...select.options].find((o) => o.value === modelDetails.id);
    if (entry && option && modelDetails.status) {
      entry.status = modelDetails.status;
      option.textContent = optionLabel(entry);
    }
    // A model still training changes every checkpoint: its card waits for the final one (a snapshot has its own).
    const live = isTraining(modelDetails.status) && !modelDetails.snapshot;
    if (live) cardView.show(null, 'comes when the training ends.');
    else cardView.show(modelId);
    takeaway.setModel(modelId, { experiment: modelDetails.experiment, version: modelDetails.version });
    showPlayMode();
  }

  /** Says what the stream does with time: replays growth (a model still training) or plays on. */
  function showPlayMode() {
    const loops = modelDetails.loop_steps != null && isTraining(modelDetails.status) && !modelDetails.snapshot
      && modelDetails.on_checkpoint !== 'keep';
    loopBox.closest('.field').hidden = !loops;
    if (!modelDetails.id) {
      playMode.textContent = '';
    } else if (loops && loopBox.checked) {
      playMode.textContent = `Replays its growth: back to the seed every ${iterationText(modelDetails.loop_steps)} `
        + 'CA steps, to show what the model has learned so far.';
    } else {
      playMode.textContent = loops ? 'Plays on from the seed: the step count keeps going.'
        : 'Plays on from the seed as long as you watch; drag to cut it, and see whether it repairs.';
    }
  }

  function syncSlider(slider, value) {
    if (value == null || document.activeElement === slider) return;
    slider.value = value;
    showSliderValue(slider);
  }

  // --- controls: pointer, keys and pause are the viewer's (shared with the one-file player) -------------
  const viewer = createViewer(canvas, {
    grid: picture.grid,
    actions: {
      erase: (x, y) => send({ cmd: 'erase', x: round2(x), y: round2(y), r: Number(sliders.eraser.value) }),
      plant: (x, y) => send({ cmd: 'seed', x, y }),
      pause: (value) => send({ cmd: value ? 'pause' : 'play' }),
      step: () => send({ cmd: 'step' }),
      reset: () => send({ cmd: 'reset' }),
    },
    showPaused: (value) => {
      playPause.textContent = value ? 'Play' : 'Pause';
      playPause.setAttribute('aria-pressed', String(value));
    },
    active: () => visible,
  });
  loopBox.addEventListener('change', () => {
    send({ cmd: 'loop', on: loopBox.checked });
    showPlayMode();
  });
  playPause.addEventListener('click', () => viewer.togglePause());
  reconnect.addEventListener('click', () => connect(modelId));
  $('step').addEventListener('click', () => viewer.step());
  $('reset').addEventListener('click', () => viewer.reset());

  for (const slider of Object.values(sliders)) {
    showSliderValue(slider);
    slider.addEventListener('input', () => showSliderValue(slider));
  }
  const sendSpeed = () => send({ cmd: 'speed', fps: Number(sliders.fps.value), steps_per_frame: Number(sliders.spf.value) });
  sliders.fps.addEventListener('input', sendSpeed);
  sliders.spf.addEventListener('input', sendSpeed);
  sliders.angle.addEventListener('input', () => send({ cmd: 'rotate', angle: Number(sliders.angle.value) }));

  select.addEventListener('change', () => {
    history.replaceState(null, '', `#watch/${encodeURIComponent(select.value)}`);
    connect(select.value);
  });

  // A hidden tab pauses its stream (the server then computes nothing for it) and resumes on return.
  document.addEventListener('visibilitychange', () => {
    if (!visible || !client) return;
    if (document.hidden && !viewer.paused) {
      pausedWhileHidden = true;
      send({ cmd: 'pause' });
    } else if (!document.hidden && pausedWhileHidden) {
      pausedWhileHidden = false;
      send({ cmd: 'play' });
    }
  });

  const loads = latestWins(); // only the newest model list may connect, and only while the view is shown
  const pages = latestWins(); // a search or "More models": only the newest fills the picker
  const query = () => { const q = searchBox.value.trim(); return q ? { q } : {}; };

  /** The picker shows `models` (grouped), `keep` besides when not among them; "More models" follows `cursor`. */
  function showList(models, cursor, keep = null) {
    const all = keep && !models.some((m) => m.id === keep.id) ? [keep, ...models] : models;
    listed = new Map(all.map((m) => [m.id, m]));
    fillSelect(select, all);
    nextCursor = cursor;
    moreModels.hidden = !cursor;
    if (modelId && listed.has(splitRef(modelId).id)) select.value = splitRef(modelId).id;
  }

  // The list is one page (the server's first: the examples and the newest models); the box asks the server.
  async function loadModels(wanted) {
    const ticket = loads.next();
    pages.cancel();
    let page;
    let wantedEntry = null;
    const wantedId = (wanted || modelId) && splitRef(wanted || modelId).id;
    try {
      page = await listModels(query());
      // A model named by the link (a share link, an older job) may be past the first page: asked for alone.
      if (wantedId && !page.items.some((m) => m.id === wantedId)) {
        wantedEntry = listed.get(wantedId) || await getModel(wantedId).catch(() => null);
      }
    } catch (error) {
      if (ticket.current()) say(`Could not load models: ${error.message}`);
      return;
    }
    if (!ticket.current()) return;
    showList(page.items, page.next_cursor, wantedEntry);
    const models = [...listed.values()];
    if (!visible) return; // left the view while the list was loading: no stream for a hidden canvas
    if (models.length === 0) {
      say(searchBox.value.trim() ? 'No model by that name among the newest: More models looks further.'
        : 'No models yet: train one, or put example model files in models/.');
      return;
    }
    const listedRef = (ref) => ref && models.some((m) => m.id === splitRef(ref).id); // a model or its checkpoint
    const pick = listedRef(wanted) ? wanted : (listedRef(modelId) ? modelId : models[0].id);
    select.value = splitRef(pick).id;
    if (pick !== modelId || !client) connect(pick);
  }

  /** A new search (or an emptied box): the first page of what matches; the model playing stays listed. */
  async function searchModels() {
    const ticket = pages.next();
    try {
      const page = await listModels(query());
      if (!ticket.current()) return;
      showList(page.items, page.next_cursor, modelId ? listed.get(splitRef(modelId).id) : null);
      const q = searchBox.value.trim();
      if (q && !page.items.length) {
        say(page.next_cursor ? `No model named “${q}” among the newest: More models looks further.`
          : `No model's name contains “${q}”.`);
      }
    } catch (error) {
      if (ticket.current()) say(`Could not search models: ${error.message}`);
    }
  }

  let searchTimer = null;
  searchBox.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(searchModels, 250);
  });
  moreModels.addEventListener('click', async () => {
    const ticket = pages.next();
    try {
      const page = await listModels({ ...query(), cursor: nextCursor });
      if (!ticket.current()) return;
      showList([...listed.values(), ...page.items.filter((m) => !listed.has(m.id))], page.next_cursor);
      if (!page.items.length && searchBox.value.trim() && page.next_cursor) say('Nothing more yet: More models looks further.');
    } catch (error) {
      if (ticket.current()) say(`Could not load more models: ${error.message}`);
    }
  });

  return {
    /** Show the view, on `wantedModel` if given; the stream only runs while the view is visible. */
    show(wantedModel) {
      visible = true;
      loadModels(wantedModel || modelId);
    },
    hide() {
      visible = false;
      if (client) client.close();
      client = null;
      timeline.hide();
    },
  };
}

/**
 * The stream's frames on the canvas, one crisp square per cell, with the CA step and the frames per second
 * received. Only the newest frame is drawn at the next animation frame: a slow screen skips frames, never
 * queues them.
 */
function createPicture(canvas, stepOut, fpsOut) {
  const offscreen = document.createElement('canvas');
  let latest = null; // newest frame not yet drawn
  let size = [0, 0]; // the grid shown, in cells
  let frameTimes = []; // arrivals within the last second

  function draw() {
    const frame = latest;
    latest = null;
    if (!frame) return;
    drawFrame(canvas, frame, CANVAS_SIDE, offscreen);
    size = [frame.width, frame.height];
    stepOut.textContent = frame.step;
    fpsOut.textContent = frameTimes.length;
  }

  return {
    offer(frame) {
      const now = performance.now();
      frameTimes.push(now);
      while (frameTimes.length && now - frameTimes[0] > 1000) frameTimes.shift();
      if (latest === null) requestAnimationFrame(draw);
      latest = frame;
    },
    clear() {
      latest = null;
      frameTimes = [];
    },
    grid: () => size,
  };
}

/** The picker's groups: which models are examples, which are jobs still training, which are finished. */
const GROUPS = [
  ['Examples', (m) => (m.source || 'example') === 'example'],
  ['Training now', (m) => m.source === 'job' && isTraining(m.status)],
  ['Finished jobs', (m) => m.source === 'job' && !isTraining(m.status)],
];

function fillSelect(select, models) {
  select.replaceChildren();
  for (const [label, member] of GROUPS) {
    const members = models.filter(member);
    if (!members.length) continue;
    const group = document.createElement('optgroup');
    group.label = label;
    for (const model of members) {
      const option = document.createElement('option');
      option.value = model.id;
      option.textContent = optionLabel(model);
      group.append(option);
    }
    select.append(group);
  }
}

/** The picker's label: name, experiment, and the job's status unless it is settled. */
function optionLabel(model) {
  const settled = ['ready', 'succeeded'].includes(model.status);
  const status = model.status && !settled ? ` (${model.status === 'running' ? 'training' : model.status})` : '';
  const experiment = model.experiment ? ` · ${model.experiment}` : '';
  return `${model.name || model.id}${experiment}${status}`;
}

function describeModel(info) {
  const parts = [];
  if (info.experiment) parts.push(info.experiment);
  if (info.width && info.height) parts.push(`${info.width}×${info.height} cells`);
  if (info.iterations) parts.push(`iteration ${iterationText(info.iterations)}`);
  if (info.loss != null) parts.push(`loss ${lossText(info.loss)}`);
  if (STATUS_TEXT[info.status]) parts.push(STATUS_TEXT[info.status]);
  return parts.map((part) => part.replaceAll(' ', '\u00a0')).join(' · '); // lines break between parts only
}

/** What a `reloaded` event did, in words: which checkpoint plays now and what became of the cells. */
function describeReload(event) {
  const checkpoint = `the checkpoint at iteration ${iterationText(event.iteration)}`
    + (event.loss != null ? `, loss ${lossText(event.loss)}` : '');
  const planted = event.replanted
    ? ` and your ${event.replanted} planted cell${event.replanted === 1 ? '' : 's'}` : '';
  const done = isTraining(event.status) ? '' : ` ${describeStatus(event)}`;
  return event.regrown
    ? `Regrown from the seed${planted} with ${checkpoint}.${done}`
    : `Swapped in ${checkpoint}; the cells carry on.${done}`;
}

/** A job's status change without a new checkpoint, in words. */
function describeStatus(event) {
  const at = `iteration ${iterationText(event.iteration)}`;
  switch (event.status) {
    case 'succeeded': return `Training finished at ${at}: this is the final model.`;
    case 'cancelled': return `Training was cancelled: this is its last checkpoint, ${at}.`;
    case 'failed': return `Training failed: this is its last checkpoint, ${at}.`;
    case 'queued': return `Training is waiting for a worker; it plays its checkpoint at ${at}.`;
    default: return `Training: this is its checkpoint at ${at}.`;
  }
}

function showSliderValue(slider) {
  const out = document.querySelector(`output[for="${slider.id}"]`);
  if (out) out.textContent = slider.id === 'angle' ? `${slider.value}°` : slider.value;
}

const round2 = (v) => Math.round(v * 100) / 100;
