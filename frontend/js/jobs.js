// The Jobs view: one card per job with status, progress, speed, ETA and a live loss chart.
// Only active jobs are polled (GET /api/jobs/{id}); polling slows down while the tab is hidden.

import { cancelJob, getJob, listJobs } from './api.js';
import { drawLossChart } from './chart.js';
import { showStrip } from './timeline.js';

const ACTIVE = new Set(['queued', 'running']);
const POLL_MS = 1000;
const HIDDEN_POLL_MS = 15000;
const PAGE_SIZE = 20;
const PREVIEW_MS = 10000; // the server grows a preview per request: not on every poll

/** `onWatch(modelId)` opens the Watch view on a job's model. */
export function initJobs(onWatch) {
  const list = document.getElementById('job-list');
  const empty = document.getElementById('jobs-empty');
  const statusLine = document.getElementById('jobs-status');
  const more = document.getElementById('more-jobs');
  const cards = new Map(); // job id -> {element, job}
  let timer = null;
  let nextPage = null;

  function upsert(job) {
    let card = cards.get(job.id);
    if (!card) {
      card = { element: createCard(job, onWatch, cancel), job };
      // Newest first, wherever the job came from (this page, a refresh, an older page).
      const createdAt = (id) => cards.get(id)?.job.created_at ?? 0;
      const older = [...list.children].find((el) => createdAt(el.dataset.jobId) < (job.created_at ?? 0));
      list.insertBefore(card.element, older ?? null);
      cards.set(job.id, card);
    }
    card.job = job;
    updateCard(card.element, job);
    showStrip(card.element, job, onWatch); // its checkpoints grown from the seed
    empty.hidden = cards.size > 0;
  }

  async function cancel(id) {
    try {
      upsert(await cancelJob(id));
      statusLine.textContent = 'Cancel requested; the job stops after its current iteration.';
    } catch (error) {
      statusLine.textContent = `Could not cancel: ${error.message}`;
      cards.get(id).element.querySelector('[data-action="cancel"]').disabled = false;
    }
    schedule(0);
  }

  async function poll() {
    timer = null;
    const active = [...cards.values()].filter((c) => ACTIVE.has(c.job.status));
    await Promise.all(active.map(async (card) => {
      try {
        upsert(await getJob(card.job.id));
      } catch (error) {
        statusLine.textContent = `Lost touch with job ${shortId(card.job.id)}: ${error.message}`;
      }
    }));
    schedule();
  }

  function schedule(delay) {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    const anyActive = [...cards.values()].some((c) => ACTIVE.has(c.job.status));
    if (!anyActive) return;
    timer = setTimeout(poll, delay ?? (document.hidden ? HIDDEN_POLL_MS : POLL_MS));
  }
  // Back to the fast pace (and fresh numbers) as soon as the tab is visible again.
  document.addEventListener('visibilitychange', () => { if (!document.hidden) schedule(0); });

  async function refresh() {
    try {
      const page = await listJobs({ limit: PAGE_SIZE });
      for (const job of page.items) upsert(job);
      nextPage = nextOffset(page);
      more.hidden = nextPage === null;
      statusLine.textContent = '';
      empty.hidden = cards.size > 0;
    } catch (error) {
      statusLine.textContent = `Could not load jobs: ${error.message}`;
    }
    schedule(0);
  }

  more.addEventListener('click', async () => {
    try {
      const page = await listJobs({ limit: PAGE_SIZE, offset: nextPage });
      for (const job of page.items) upsert(job);
      nextPage = nextOffset(page);
      more.hidden = nextPage === null;
    } catch (error) {
      statusLine.textContent = `Could not load older jobs: ${error.message}`;
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

/** The next page's offset, or null when this page reached the end. */
function nextOffset(page) {
  const end = page.offset + page.items.length;
  return end < page.total ? end : null;
}

// --- rendering ---------------------------------------------------------------------------------

function createCard(job, onWatch, cancel) {
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
      <progress max="1" value="0"></progress>
      <p class="job-numbers"></p>
      <p class="job-error error" role="alert" hidden></p>
      <p class="job-warning hint" hidden></p>
      <div class="job-actions">
        <button type="button" data-action="watch">Watch</button>
        <button type="button" data-action="cancel">Cancel</button>
        <a data-action="download" class="button" download>Download model</a>
      </div>
    </div>
    <canvas class="loss-chart" role="img" aria-label="Loss over iterations, log scale"></canvas>`;
  li.querySelector('[data-action="watch"]').addEventListener('click', () => onWatch(li.dataset.jobId));
  li.querySelector('[data-action="cancel"]').addEventListener('click', (event) => {
    event.currentTarget.disabled = true;
    cancel(li.dataset.jobId);
  });
  return li;
}

function updateCard(li, job) {
  const { total } = job;
  const iteration = job.iteration ?? 0;
  const active = ACTIVE.has(job.status);
  li.dataset.status = job.status;

  const target = li.querySelector('.job-target');
  if (target.getAttribute('src') !== job.links.target) target.src = job.links.target;
  showPreview(li, job);

  li.querySelector('.job-name').textContent = job.name || `Job ${shortId(job.id)}`;
  const badge = li.querySelector('[data-role="status"]');
  badge.textContent = job.status;
  badge.dataset.status = job.status;
  const resumed = job.resumed_from?.length
    ? `resumed from iteration ${job.resumed_from[job.resumed_from.length - 1]} after a worker was lost` : '';
  li.querySelector('.job-meta').textContent = [job.options.experiment, job.device && `on ${job.device}`,
    job.created_at && `submitted ${formatTime(job.created_at)}`, resumed].filter(Boolean).join(' · ');

  const progress = li.querySelector('progress');
  progress.max = Math.max(total, 1);
  progress.value = Math.min(iteration, progress.max);
  progress.setAttribute('aria-label', `${iteration} of ${total} iterations`);

  const rate = job.iterations_per_second;
  const numbers = [`${iteration.toLocaleString()} / ${total.toLocaleString()} it`];
  if (job.loss != null) numbers.push(`loss ${Number(job.loss).toExponential(2)}`);
  if (active && rate) numbers.push(`${rate.toFixed(rate < 10 ? 2 : 1)} it/s`);
  if (job.status === 'running' && job.eta_seconds != null) numbers.push(`ETA ${formatDuration(job.eta_seconds)}`);
  li.querySelector('.job-numbers').textContent = numbers.join(' · ');

  const error = li.querySelector('.job-error');
  error.textContent = job.error || '';
  error.hidden = !job.error;
  const warning = li.querySelector('.job-warning'); // e.g. the worker could not export a copy to its disk
  warning.textContent = job.warning ? `Note: ${job.warning}` : '';
  warning.hidden = !job.warning;

  const cancelButton = li.querySelector('[data-action="cancel"]');
  cancelButton.hidden = !active;
  cancelButton.disabled = Boolean(job.cancel_requested);
  const modelUrl = job.links.model_file; // set from the first checkpoint on
  const hasModel = Boolean(modelUrl);
  const download = li.querySelector('[data-action="download"]');
  download.hidden = !hasModel;
  if (hasModel) download.href = modelUrl;
  li.querySelector('[data-action="watch"]').hidden = !hasModel;
  drawChart(li, job);
}

/** The model grown from the seed (the server renders it), refreshed at most every PREVIEW_MS. */
function showPreview(li, job) {
  const image = li.querySelector('.job-preview');
  image.closest('figure').hidden = !job.links.preview;
  if (!job.links.preview || image.dataset.version === String(job.model_version)) return;
  const now = Date.now();
  if (ACTIVE.has(job.status) && now - Number(image.dataset.loadedAt || 0) < PREVIEW_MS) return;
  image.dataset.version = job.model_version;
  image.dataset.loadedAt = now;
  image.src = `${job.links.preview}?scale=1&version=${job.model_version}`;
}

function drawChart(li, job) {
  drawLossChart(li.querySelector('.loss-chart'), job.loss_history);
}

const shortId = (id) => String(id).slice(0, 8);

function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '–';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function formatTime(value) {
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleString();
}
