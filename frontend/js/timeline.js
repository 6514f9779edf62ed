// The training timeline: a job's checkpoints (GET /api/jobs/{id}/checkpoints) as a slider in the
// Watch view and as a strip of small "grown from the seed" pictures on each job card, a replay of
// how the model learned. Any checkpoint plays on the stream as `model=<job id>@<iteration>`, a fixed
// snapshot; the latest plays as `model=<job id>`, live: each new checkpoint is swapped in.

import { listCheckpoints } from './api.js';
import { isJobId, isTraining, iterationText, lossText as shortLoss, splitRef } from './formats.js';
import { latestWins } from './latest.js';

const POLL_MS = 5000; // the Watch slider's list, while the job trains
const PICK_MS = 200; // a slider that stops moving this long plays where it stopped
const STRIP_SIZE = 8; // pictures on a job card at most, evenly chosen
const STRIP_MS = 10000; // a training job's strip is read again at most this often

const lossText = (loss) => (loss == null ? '' : `, loss ${shortLoss(loss)}`);
const previewUrl = (c) => `${c.links.preview}?scale=1&v=${c.version}`;

// --- Watch: a slider over the job's checkpoints ----------------------------------------------------

/**
 * A slider under the model picker (`field`, the picker's .field), shown for jobs with checkpoints.
 * `onPick(ref)` plays a checkpoint: the job id for the latest (live), `<id>@<iteration>` for the others.
 */
export function initTimeline(field, onPick) {
  const box = document.createElement('div');
  box.className = 'field timeline';
  box.hidden = true;
  box.innerHTML = `
    <label for="timeline">Training history <output id="timeline-value" for="timeline"></output></label>
    <input id="timeline" type="range" min="0" max="0" step="1" value="0">
    <div class="timeline-ends hint"><span data-end="first"></span>
      <span class="timeline-actions"><a id="timeline-fork" href="#train" title="Train a new picture from this
        checkpoint">new picture</a><span> · <a id="timeline-continue" href="#jobs"
        title="Continue training from this checkpoint">continue</a></span></span>
      <span data-end="latest"></span></div>
    <p id="timeline-info" class="hint" aria-live="polite"></p>`;
  field.after(box);
  const slider = box.querySelector('input');
  const value = box.querySelector('output');
  const info = box.querySelector('#timeline-info');
  let jobId = null;
  let items = [];
  let status = null;
  let playing = null; // the iteration the stream plays; null: the latest, live
  let timer = null;
  let pickTimer = null;
  const loads = latestWins();

  const atLatest = () => Number(slider.value) === items.length - 1;

  function render() {
    box.hidden = items.length === 0;
    if (!items.length) return;
    slider.max = String(items.length - 1);
    slider.disabled = items.length < 2;
    const index = playing === null ? items.length - 1 : nearest(items, playing);
    if (document.activeElement !== slider || pickTimer === null) slider.value = String(index);
    describe();
    box.querySelector('[data-end="first"]').textContent = `it ${iterationText(items[0].iteration)}`;
    box.querySelector('[data-end="latest"]').textContent = `it ${iterationText(items[items.length - 1].iteration)}`;
  }

  /** The checkpoint under the thumb, in words: which one, and whether it is live or a snapshot. */
  function describe() {
    const checkpoint = items[Number(slider.value)];
    value.textContent = `${Number(slider.value) + 1} / ${items.length}`;
    const what = `Iteration ${iterationText(checkpoint.iteration)}${lossText(checkpoint.loss)}`;
    info.textContent = atLatest()
      ? `${what}: the latest checkpoint${isTraining(status) ? ', live: each new one is swapped in' : ''}.`
      : `${what}: a snapshot of the training at that point.`;
    const ref = atLatest() ? jobId : checkpoint.model; // what a new job starts from (start_from)
    box.querySelector('#timeline-fork').href = `#train/${encodeURIComponent(ref)}`;
    const again = box.querySelector('#timeline-continue');
    again.parentElement.hidden = isTraining(status);
    again.href = `#continue/${encodeURIComponent(ref)}`;
  }

  async function load() {
    const ticket = loads.next();
    clearTimeout(timer);
    let listing;
    try {
      listing = await listCheckpoints(jobId);
    } catch (error) {
      if (ticket.current()) info.textContent = `Could not load the training history: ${error.message}`;
      listing = null;
    }
    if (!ticket.current()) return;
    if (listing) {
      ({ items, status } = listing);
      render();
    }
    if (!listing || isTraining(status)) timer = setTimeout(load, POLL_MS);
  }

  slider.addEventListener('input', () => {
    describe();
    clearTimeout(pickTimer);
    pickTimer = setTimeout(() => {
      pickTimer = null;
      const checkpoint = items[Number(slider.value)];
      if (!checkpoint) return;
      onPick(atLatest() ? jobId : checkpoint.model);
    }, PICK_MS);
  });

  return {
    /** The stream now plays `ref`: show that job's history with the thumb on what plays. */
    follow(ref) {
      const { id, iteration } = splitRef(ref || '');
      playing = iteration;
      if (id === jobId) {
        render();
        return;
      }
      this.hide();
      if (!isJobId(id)) return; // an example: it has no history
      jobId = id;
      load();
    },
    /** A new checkpoint was announced (the stream's `reloaded`): read the list again now. */
    refresh() {
      if (jobId) load();
    },
    hide() {
      loads.cancel();
      clearTimeout(timer);
      clearTimeout(pickTimer);
      pickTimer = null;
      jobId = null;
      items = [];
      box.hidden = true;
    },
  };
}

/** The index of the checkpoint closest to `iteration` (one thinned away since is replaced by a neighbour). */
function nearest(items, iteration) {
  let best = 0;
  items.forEach((c, i) => {
    if (Math.abs(c.iteration - iteration) < Math.abs(items[best].iteration - iteration)) best = i;
  });
  return best;
}

// --- Jobs: a strip of pictures grown from each checkpoint ---------------------------------------

/** Up to `size` items, evenly spread, always the first and the last. */
export function evenly(items, size) {
  if (items.length <= size) return items;
  const picked = new Set();
  for (let k = 0; k < size; k += 1) picked.add(Math.round((k * (items.length - 1)) / (size - 1)));
  return [...picked].map((i) => items[i]);
}

/**
 * A job card's strip (added to `parent` when first shown): a handful of the job's checkpoints grown from the
 * seed, each a button that opens the Watch view on it (`onWatch(ref)`). `show(job)` follows the job record.
 * New pictures are loaded off screen and shown together once all have arrived: never a half-loaded strip.
 */
export function createStrip(parent, jobId, onWatch) {
  const strip = document.createElement('div');
  strip.className = 'checkpoint-strip';
  strip.hidden = true;
  strip.innerHTML = `<p class="hint">Grown from the seed at each checkpoint (a replay of the training; pick one to watch it)</p>
    <ol aria-label="Checkpoints, oldest first"></ol>`;
  parent.append(strip);
  const list = strip.querySelector('ol');
  const loads = latestWins();
  let asked = null; // the job's `<model_version>/<status>` the strip was last read for
  let askedAt = 0;
  let shownKey = ''; // the checkpoints whose pictures are on screen

  async function load() {
    const ticket = loads.next();
    let listing;
    try {
      listing = await listCheckpoints(jobId);
    } catch {
      if (ticket.current()) asked = null; // tried again at the next update
      return;
    }
    if (!ticket.current()) return;
    const items = evenly(listing.items, STRIP_SIZE);
    const key = items.map((c) => `${c.iteration}:${c.version}`).join(',');
    if (key === shownKey) return; // the same pictures: nothing reloads
    const entries = items.map((checkpoint, i) => stripItem(checkpoint, i === items.length - 1, jobId, onWatch));
    // Wait for every picture (a broken one counts as arrived: its alt text stands in), then show them together.
    await Promise.all(entries.map(({ image }) => image.decode().catch(() => {})));
    if (!ticket.current()) return;
    shownKey = key;
    list.replaceChildren(...entries.map(({ li }) => li));
    strip.hidden = items.length === 0;
  }

  return {
    show(job) {
      if (!job.model_version) {
        strip.hidden = true;
        return;
      }
      const state = `${job.model_version}/${job.status}`;
      const now = Date.now();
      const due = now - askedAt >= STRIP_MS || !isTraining(job.status);
      if (asked === state || !due) return;
      asked = state;
      askedAt = now;
      load();
    },
  };
}

function stripItem(checkpoint, latest, jobId, onWatch) {
  const li = document.createElement('li');
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'strip-item';
  button.title = `Iteration ${iterationText(checkpoint.iteration)}${lossText(checkpoint.loss)}`
    + `${latest ? ' (latest)' : ''}: watch it`;
  const image = document.createElement('img');
  image.className = 'pixels';
  image.loading = 'eager'; // a handful of small pictures: all of them now, not when scrolled to
  image.width = 48;
  image.height = 48;
  image.alt = `Grown at iteration ${iterationText(checkpoint.iteration)}`;
  image.src = previewUrl(checkpoint);
  const label = document.createElement('span');
  label.textContent = iterationText(checkpoint.iteration);
  button.append(image, label);
  button.addEventListener('click', () => onWatch(latest ? jobId : checkpoint.model));
  li.append(button);
  return { li, image };
}
