// What the page says the same way everywhere: durations, iterations and losses, a job's status words, and
// the grammar of model references (`<job id>` and `<job id>@<iteration>`, docs/api.md).

// --- durations ----------------------------------------------------------------------------------

/**
 * A duration in words. Rough, as the Train form talks about time to come: "45 s", "6 min", "2 h 10 min".
 * `exact`, as a job card counts time spent: "45s", "6m 05s", "2h 10m".
 */
export function duration(seconds, { exact = false } = {}) {
  if (!Number.isFinite(seconds) || seconds < 0) return '–';
  const s = Math.round(seconds);
  if (exact) {
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  }
  if (s < 60) return `${s} s`;
  const minutes = Math.round(s / 60);
  if (minutes < 60) return `${minutes} min`;
  const rest = minutes % 60;
  return `${Math.floor(minutes / 60)} h${rest ? ` ${rest} min` : ''}`;
}

/** The rough form of `duration` (the Train form's estimates). */
export const roughDuration = (seconds) => duration(seconds);

/** A moment (Unix seconds or an ISO text) in the reader's local time; '' when unreadable. */
export function clockTime(value) {
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleString();
}

// --- numbers ------------------------------------------------------------------------------------

/** 12000 -> "12,000" (the reader's locale). */
export const iterationText = (n) => Number(n).toLocaleString();
/** A loss, short: 0.00123 -> "1.2e-3"; `digits` after the point. */
export const lossText = (loss, digits = 1) => Number(loss).toExponential(digits);
export const bytesText = (bytes) => {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
};

// --- a job's status -----------------------------------------------------------------------------

/** Statuses in which a job still trains (new checkpoints may come): backend/storage/jobs.py's ACTIVE. */
export const TRAINING = Object.freeze(['queued', 'running']);
export const isTraining = (status) => TRAINING.includes(status);
/** A model's status as a phrase: an example is "ready", a job's model follows its job. */
export const STATUS_TEXT = Object.freeze({
  queued: 'training (waiting for a worker)', running: 'training', succeeded: 'training finished',
  cancelled: 'training cancelled', failed: 'training failed',
});

// --- model references -----------------------------------------------------------------------------

/** A job id (and so its model's id): 32 lowercase hex digits. Examples are `example-<stem>`. */
export const JOB_ID = /^[0-9a-f]{32}$/;
export const isJobId = (id) => JOB_ID.test(String(id));

/** `<job id>@<iteration>` -> {id, iteration}; a plain model id -> {id, iteration: null}. */
export function splitRef(ref) {
  const text = String(ref);
  const at = text.indexOf('@');
  return at < 0 ? { id: text, iteration: null } : { id: text.slice(0, at), iteration: Number(text.slice(at + 1)) };
}

/** The first 8 characters of an id: enough to tell jobs apart in a sentence. */
export const shortId = (id) => String(id).slice(0, 8);

/** The API path of a model (or one checkpoint of a job) plus `rest`, e.g. modelPath(ref, '/card'). */
export const modelPath = (ref, rest = '') => `/api/models/${encodeURIComponent(ref)}${rest}`;
