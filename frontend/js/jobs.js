// The Jobs view: one card per job with status, progress, speed, ETA and a live loss chart.
// Only active jobs are polled (GET /api/jobs/{id}); polling slows down while the tab is hidden.

import { cancelJob, getJob, listJobs } from './api.js';
import { drawLossChart } from './chart.js';
import { clockTime, duration, isTraining, iterationText, lossText, shortId } from './formats.js';
import { createCardView } from './modelcard.js';
import { openRoom } from './rooms.js';
import { createOwnerActions, updateOwnerActions } from './sharing.js';
import { createTakeaway } from './takeaway.js';
import { createStrip } from './timeline.js';

const POLL_MS = 1000;
const HIDDEN_POLL_MS = 15000;
const PAGE_SIZE = 20;
const PREVIEW_MS = 10000; // the server grows a preview per request: not on every poll
const CONFIRM_AFTER_S = 60; // cancelling a job that has trained longer than this asks first
// Why a job's last run ended early (job.interrupted_by): a normal stop is not a crash.
const RESUMED_AFTER = { stop: 'after a stop', worker_lost: 'after its worker was lost' };

/** `onWatch(modelId)` opens the Watch view on a job's model. */
export function initJobs(onWatch) {
  const list = document.getElementById('job-list');
  const empty = document.getElementById('jobs-empty');
  const statusLine = document.getElementById('jobs-status');
  const more = document.getElementById('more-jobs');
  const cards = new Map(); // job id -> a Card
  const lost = new Map(); // job id -> why its last poll failed
  let timer = null;
  let nextPage = null;
  let statusSource = ''; // who wrote the line above the list: 'poll' or 'list'

  // The line above the list says only what is true now: a message belongs to its source and goes with it.
  function setStatus(text, source) {
    statusLine.textContent = text;
    statusSource = text ? source : '';
  }
  function clearStatus(source) {
    if (statusSource === source) setStatus('', '');
  }

  function upsert(job) {
    let card = cards.get(job.id);
    if (!card) {
      card = createCard(job, { onWatch, onCancel: cancel, onDeleted: remove, onChanged: reload });
      // Newest first, wherever the job came from (this page, a refresh, an older page).
      const older = [...cards.values()].filter((c) => (c.job.created_at ?? 0) < (job.created_at ?? 0))
        .sort((a, b) => (b.job.created_at ?? 0) - (a.job.created_at ?? 0))[0];
      list.insertBefore(card.element, older?.element ?? null);
      cards.set(job.id, card);
    }
    if (card.job.status !== job.status || card.job.cancel_requested !== job.cancel_requested) card.message = '';
    card.job = job;
    updateCard(card);
    empty.hidden = cards.size > 0;
  }

  function remove(id) {
    cards.get(id)?.element.remove();
    cards.delete(id);
    empty.hidden = cards.size > 0;
  }

  async function reload(id) {
    try {
      upsert(await getJob(id));
    } catch (error) {
      if (error.status === 404) remove(id);
    }
  }

  async function cancel(id) {
    const card = cards.get(id);
    try {
      upsert(await cancelJob(id));
    } catch (error) {
      card.message = `Could not cancel: ${error.message}`;
      updateCard(card);
      card.element.querySelector('[data-action="cancel"]').disabled = false;
    }
    schedule(0);
  }

  async function poll() {
    timer = null;
    const active = [...cards.values()].filter((c) => isTraining(c.job.status));
    await Promise.all(active.map(async (card) => {
      try {
        upsert(await getJob(card.job.id));
        lost.delete(card.job.id);
      } catch (error) {
        lost.set(card.job.id, error.message);
      }
    }));
    for (const id of lost.keys()) if (!isTraining(cards.get(id)?.job.status)) lost.delete(id);
    const [id, why] = lost.entries().next().value ?? [];
    if (id) setStatus(`Lost touch with job ${shortId(id)}: ${why}`, 'poll');
    else clearStatus('poll');
    schedule();
  }

  function schedule(delay) {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    const anyActive = [...cards.values()].some((c) => isTraining(c.job.status));
    if (!anyActive) return;
    timer = setTimeout(poll, delay ?? (document.hidden ? HIDDEN_POLL_MS : POLL_MS));
  }
  // Back to the fast pace (and fresh numbers) as soon as the tab is visible again.
  document.addEventListener('visibilitychange', () => { if (!document.hidden) schedule(0); });

  async function refresh() {
    try {
      const page = await listJobs({ limit: PAGE_SIZE });
      for (const job of page.items) upsert(job);
      nextPage = page.next_cursor;
      more.hidden = !nextPage;
      clearStatus('list');
      empty.hidden = cards.size > 0;
    } catch (error) {
      setStatus(`Could not load jobs: ${error.message}`, 'list');
    }
    schedule(0);
  }

  more.addEventListener('click', async () => {
    try {
      const page = await listJobs({ limit: PAGE_SIZE, cursor: nextPage });
      for (const job of page.items) upsert(job);
      nextPage = page.next_cursor;
      more.hidden = !nextPage;
      clearStatus('list');
    } catch (error) {
      setStatus(`Could not load older jobs: ${error.message}`, 'list');
    }
    schedule(0);
  });
  document.getElementById('refresh-jobs').addEventListener('click', refresh);
  window.addEventListener('resize', () => cards.forEach((c) => drawChart(c.element, c.job)));

  return {
    refresh,
    /** A job just created by this page: show it first and start polling it. */
    add(job) {
      upsert(job);
      schedule(0);
    },
  };
}

// --- reading the job record (GET /api/jobs/{id}, docs/api.md) -----------------------------------

// --- rendering ---------------------------------------------------------------------------------

/** How long a job has trained so far (or in all, once finished), in seconds, from the server's times. A
 * finished job's own count of training time leaves out the time between runs (a stop, a lost worker). */
function trainedSeconds(job) {
  if (!isTraining(job.status) && job.trained_seconds != null) return job.trained_seconds;
  if (!job.started_at) return 0;
  return (job.finished_at ?? Date.now() / 1000) - job.started_at;
}

/**
 * One job's card: {element, job, message, ...}; `message` is the last failed action's. Its parts that keep
 * state of their own (strip, model card, exports menu) are made here and updated by updateCard.
 */
function createCard(job, { onWatch, onCancel, onDeleted, onChanged }) {
  const li = document.createElement('li');
  li.className = 'job card';
  li.dataset.jobId = job.id;
  li.innerHTML = `
    <div class="job-images">
      <figure><img class="job-target pixels" alt="Target image" width="72" height="72"><figcaption>target</figcaption></figure>
      <figure hidden><img class="job-preview pixels" alt="What the model grows from one cell" width="72" height="72">
        <figcaption>grown</figcaption></figure>
    </div>
    <div class="job-main">
      <div class="job-head">
        <h3 class="job-name"></h3>
        <span class="badge" data-role="status"></span>
      </div>
      <p class="job-meta hint"></p>
      <p class="job-plan hint" hidden></p>
      <progress max="1" value="0"></progress>
      <p class="job-numbers"></p>
      <p class="job-note" role="status" aria-live="polite"></p>
      <p class="job-error error" role="alert" hidden></p>
      <p class="job-warning hint" hidden></p>
      <div class="job-actions">
        <button type="button" data-action="watch">Watch</button>
        <button type="button" data-action="room">Open a room</button>
        <button type="button" data-action="cancel">Cancel</button>
        <a data-action="download" class="button" download>Download model</a>
        <a data-action="continue" class="button">Continue training</a>
        <a data-action="fork" class="button">Train a new picture from this</a>
      </div>
      <p class="job-lineage hint" hidden></p>
      <div class="job-confirm" role="group" aria-label="Confirm cancelling" hidden>
        <p></p>
        <button type="button" class="danger" data-action="confirm-cancel">Stop training</button>
        <button type="button" data-action="keep-training">Keep training</button>
      </div>
      <div class="job-strip"></div>
      <section class="job-card-summary" aria-label="Model card" hidden></section>
      <div class="job-takeaway" hidden></div>
    </div>
    <canvas class="loss-chart" role="img" aria-label="Loss over iterations, log scale"></canvas>`;
  const card = {
    element: li, job, message: '',
    preview: { version: null, loadedAt: 0 }, // the grown picture shown, and when it was fetched
    strip: createStrip(li.querySelector('.job-strip'), job.id, onWatch),
    summary: createCardView(li.querySelector('.job-card-summary')),
    takeaway: createTakeaway(li.querySelector('.job-takeaway')),
  };
  const cancelButton = li.querySelector('[data-action="cancel"]');
  const confirm = li.querySelector('.job-confirm');
  const stop = () => {
    confirm.hidden = true;
    cancelButton.disabled = true;
    onCancel(job.id);
  };
  li.querySelector('[data-action="watch"]').addEventListener('click', () => onWatch(job.id));
  li.querySelector('[data-action="room"]').addEventListener('click', () => openRoom(job.id, (message) => {
    li.querySelector('.job-note').textContent = message;
  }));
  cancelButton.addEventListener('click', () => {
    const seconds = trainedSeconds(card.job);
    if (seconds <= CONFIRM_AFTER_S) return stop(); // a misclick costs at most a minute: no question
    confirm.querySelector('p').textContent = `It has trained for ${duration(seconds, { exact: true })}. Stop it now? `
      + 'Its last checkpoint is kept.';
    confirm.hidden = false;
    confirm.querySelector('[data-action="confirm-cancel"]').focus();
  });
  li.querySelector('[data-action="confirm-cancel"]').addEventListener('click', stop);
  li.querySelector('[data-action="keep-training"]').addEventListener('click', () => {
    confirm.hidden = true;
    cancelButton.focus();
  });
  li.querySelector('.job-main').append(createOwnerActions({ onDeleted, onChanged })); // delete, share, publish
  return card;
}

/** Everything on a card follows the job record; `card.message` is the last failed action's, if any. */
function updateCard(card) {
  const { element: li, job, message } = card;
  const { total } = job;
  const iteration = job.iteration ?? 0;
  const active = isTraining(job.status);
  li.dataset.status = job.status; // for the stylesheet

  const target = li.querySelector('.job-target');
  if (target.getAttribute('src') !== job.links.target) target.src = job.links.target;
  showPreview(li, job, card.preview);
  card.strip.show(job); // its checkpoints grown from the seed

  li.querySelector('.job-name').textContent = job.name || `Job ${shortId(job.id)}`;
  const badge = li.querySelector('[data-role="status"]');
  badge.textContent = job.status;
  badge.dataset.status = job.status;
  const lastResume = job.resumed_from?.[job.resumed_from.length - 1];
  const resumed = lastResume === undefined ? ''
    : [`resumed from iteration ${lastResume}`, RESUMED_AFTER[job.interrupted_by]].filter(Boolean).join(' ');
  li.querySelector('.job-meta').textContent = [job.options.experiment, active && job.device && `on ${job.device}`,
    job.created_at && `submitted ${clockTime(job.created_at)}`, resumed].filter(Boolean).join(' · ');

  const plan = li.querySelector('.job-plan');
  plan.textContent = budgetText(job);
  plan.hidden = !plan.textContent;

  const progress = li.querySelector('progress');
  progress.max = Math.max(total, 1);
  progress.value = Math.min(iteration, progress.max);
  progress.setAttribute('aria-label', `${iteration} of ${total} iterations`);

  const rate = job.iterations_per_second;
  const numbers = [`${iterationText(iteration)} / ${iterationText(total)} it`];
  if (job.loss != null) numbers.push(`loss ${lossText(job.loss, 2)}`);
  if (active && rate) numbers.push(`${rate.toFixed(rate < 10 ? 2 : 1)} it/s`);
  if (job.status === 'running' && job.eta_seconds != null) {
    numbers.push(`ETA ${duration(job.eta_seconds, { exact: true })}`);
  }
  if (!active && job.started_at && job.finished_at) {
    numbers.push(`trained ${duration(trainedSeconds(job), { exact: true })}${job.device ? ` on ${job.device}` : ''}`);
  } else if (job.status === 'cancelled' && !job.started_at) {
    numbers.push('cancelled before it started');
  }
  li.querySelector('.job-numbers').textContent = numbers.join(' · ');
  // An early finish (early_stop_patience) says so, and why: "finished early at iteration N: the loss ...".
  const early = job.status === 'succeeded' && job.finished_early ? `It ${job.finished_early}.` : '';
  li.querySelector('.job-note').textContent = active && job.cancel_requested
    ? 'Cancel requested: it stops after its current iteration and keeps its last checkpoint.' : message || early;

  const error = li.querySelector('.job-error');
  error.textContent = job.error || '';
  error.hidden = !job.error;
  const warning = li.querySelector('.job-warning'); // e.g. the worker could not export a copy to its disk
  warning.textContent = job.warning ? `Note: ${job.warning}` : '';
  warning.hidden = !job.warning;

  const cancelButton = li.querySelector('[data-action="cancel"]');
  cancelButton.hidden = !active;
  cancelButton.disabled = Boolean(job.cancel_requested);
  if (!active || job.cancel_requested) li.querySelector('.job-confirm').hidden = true; // nothing left to confirm
  const modelUrl = job.links.model_file; // set from the first checkpoint on
  const hasModel = Boolean(modelUrl);
  const download = li.querySelector('[data-action="download"]');
  download.hidden = !hasModel;
  if (hasModel) download.href = modelUrl;
  li.querySelector('[data-action="watch"]').hidden = !hasModel;
  // The model card once the model is final (a training job's changes every checkpoint), and the exports.
  if (!hasModel) card.summary.show(null);
  else if (active) card.summary.show(null, 'comes when the training ends.');
  else card.summary.show(job.id);
  card.takeaway.setModel(hasModel ? job.id : null, { experiment: job.options?.experiment, version: job.model_version });
  li.querySelector('[data-action="room"]').hidden = !hasModel;
  updateOwnerActions(li.querySelector('.job-owner'), job);
  // Continue (same target, from the latest checkpoint) or fork (a new image): start_from is this model.
  const cont = li.querySelector('[data-action="continue"]');
  cont.hidden = !hasModel || active;
  cont.href = `#continue/${encodeURIComponent(job.id)}`;
  const fork = li.querySelector('[data-action="fork"]');
  fork.hidden = !hasModel;
  fork.href = `#train/${encodeURIComponent(job.id)}`;
  const lineage = li.querySelector('.job-lineage');
  const from = job.options?.start_from;
  lineage.textContent = from ? `Started from ${from}` : '';
  lineage.hidden = !from;
  drawChart(li, job);
}

/** The model grown from the seed (the server renders it), refreshed at most every PREVIEW_MS. `shown` is
 * the card's record of the picture on screen. */
function showPreview(li, job, shown) {
  const image = li.querySelector('.job-preview');
  image.closest('figure').hidden = !job.links.preview;
  if (!job.links.preview || shown.version === job.model_version) return;
  const now = Date.now();
  if (isTraining(job.status) && now - shown.loadedAt < PREVIEW_MS) return;
  shown.version = job.model_version;
  shown.loadedAt = now;
  image.src = `${job.links.preview}?scale=1&version=${job.model_version}`;
}

/** A job with a time budget: the budget and the trainer's latest plan for it (it re-plans as it measures). */
function budgetText(job) {
  const minutes = job.options?.minutes;
  if (minutes == null) return '';
  const budget = `Time budget ${duration(minutes * 60)}`;
  const plan = job.plan;
  if (!plan) return budget;
  return `${budget} · plan: ${iterationText(plan.iterations)} iterations, learning rate drops at `
    + `${iterationText(plan.lr_decay_at)}`;
}

function drawChart(li, job) {
  drawLossChart(li.querySelector('.loss-chart'), job.loss_history);
}
