// Small fetch helpers for the REST API: JSON in, JSON out, and errors as plain sentences.

/** An API answer that was not 2xx; `message` is the server's `detail`, ready to show a user. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let accessToken = '';

/** The bearer token for servers that protect creating and cancelling jobs (config.auth_required). */
export function setAccessToken(token) {
  accessToken = token.trim();
}

async function request(path, options = {}) {
  const headers = { Accept: 'application/json' };
  if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers, ...options.headers } });
  } catch {
    throw new ApiError(0, 'Cannot reach the server. Check your connection and try again.');
  }
  const isJson = (response.headers.get('content-type') || '').includes('application/json');
  const body = isJson ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    // Every API error is {"detail": "<what is wrong, in words>"}; a proxy's error page is not.
    const detail = body && typeof body.detail === 'string' ? body.detail : '';
    const message = detail || `The server answered ${response.status} ${response.statusText}.`;
    throw new ApiError(response.status, message);
  }
  return body;
}

export const getConfig = () => request('/api/config');
/**
 * A page of the model list (GET /api/models): `{items, next_cursor}`. `params`: `cursor` (the previous page's
 * next_cursor), `q` (name contains), `limit`; none: the first page, the examples first.
 */
export const listModels = (params = {}) => {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ''));
  return request(query.size ? `/api/models?${query}` : '/api/models');
};
export const getModel = (ref) => request(`/api/models/${encodeURIComponent(ref)}`);
export const listJobs = (params = {}) => request(`/api/jobs?${new URLSearchParams(params)}`);
export const getJob = (id) => request(`/api/jobs/${encodeURIComponent(id)}`);
export const listCheckpoints = (id) => request(`/api/jobs/${encodeURIComponent(id)}/checkpoints`);
export const cancelJob = (id) => request(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
/** `form` is a FormData with the `image` file and the training options as fields. */
export const createJob = (form) => request('/api/jobs', { method: 'POST', body: form });
/** The target an upload becomes (same body as createJob); `signal` aborts a preview that is no longer wanted. */
export const previewTarget = (form, signal) => request('/api/targets/preview', { method: 'POST', body: form, signal });
/**
 * How long a job with these options would take here, and the wait before it (POST /api/estimate): `options`
 * is an object of job options as the upload sends them, without the image. `signal` aborts an estimate that
 * newer options have overtaken.
 */
export const estimateJob = (options, signal) => request('/api/estimate', {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify(options),
  signal,
});

/** A model's card (GET /api/models/{ref}/card): verdict, goal and pictures; computed on first request (seconds). */
export const getCard = (ref, signal) => request(`/api/models/${encodeURIComponent(ref)}/card`, { signal });

/**
 * A file the API makes (an export, a video): {blob, filename, headers}. `signal` aborts it. Errors are
 * ApiErrors with the server's sentence, as for JSON requests.
 */
export async function getFile(path, signal) {
  let response;
  try {
    response = await fetch(path, { signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'Cannot reach the server. Check your connection and try again.');
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const detail = body && typeof body.detail === 'string' ? body.detail : '';
    throw new ApiError(response.status, detail || `The server answered ${response.status} ${response.statusText}.`);
  }
  const blob = await response.blob();
  const named = /filename="([^"]+)"/.exec(response.headers.get('content-disposition') || '');
  return { blob, filename: named ? named[1] : path.split('/').pop(), headers: response.headers };
}

/** A room on `model` (POST /api/rooms): its id, join code and link, QR code, and the host token (shown once). */
export const createRoom = (model) => request('/api/rooms', {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ model }),
});
/** A room by its id or join code (GET /api/rooms/{id or code}). */
export const getRoom = (idOrCode) => request(`/api/rooms/${encodeURIComponent(idOrCode)}`);

// --- owners and sharing (docs/api.md "Identity", "Sharing") ---------------------------------------

const jobPath = (id) => `/api/jobs/${encodeURIComponent(id)}`;
/** Who this browser is; a first visit gets its anonymous owner here (a cookie the page cannot read). */
export const getMe = () => request('/api/me');
/** Use an owner token from another browser here (its jobs come along). */
export const adoptToken = (token) => request('/api/me', {
  method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token }),
});
export const deleteJob = (id) => request(jobPath(id), { method: 'DELETE' });
export const createShare = (id) => request(`${jobPath(id)}/shares`, { method: 'POST' });
export const revokeShare = (id, token) => request(`${jobPath(id)}/shares/${encodeURIComponent(token)}`,
  { method: 'DELETE' });
export const publishJob = (id) => request(`${jobPath(id)}/publish`, { method: 'POST' });
export const unpublishJob = (id) => request(`${jobPath(id)}/publish`, { method: 'DELETE' });
