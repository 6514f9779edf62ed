// A job card's owner actions: Delete (with a confirmation), Share (copy a link, revoke it), Publish or
// Unpublish, and when retention will delete the job. Kept apart from jobs.js, which only places them.

import { createShare, deleteJob, publishJob, revokeShare, unpublishJob } from './api.js';

const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);

/** The owner's part of a card (an element to put in it); `hooks.onDeleted(id)`, `hooks.onChanged(id)`. */
export function createOwnerActions(hooks) {
  const box = document.createElement('div');
  box.className = 'job-owner';
  box.innerHTML = `
    <div class="job-actions">
      <button type="button" data-action="share">Share</button>
      <button type="button" data-action="publish">Publish</button>
      <button type="button" data-action="delete" class="danger-outline">Delete</button>
    </div>
    <ul class="job-shares"></ul>
    <p class="job-expiry hint" hidden></p>
    <p class="job-owner-note" role="status" aria-live="polite"></p>
    <div class="job-delete-confirm" data-role="confirm-delete" role="group" aria-label="Confirm deleting" hidden>
      <p>Delete this job for good? Its picture, checkpoints and model are removed from the server, and its
        share links stop working.</p>
      <button type="button" class="danger" data-action="confirm-delete">Delete for good</button>
      <button type="button" data-action="keep-job">Keep it</button>
    </div>`;
  const note = box.querySelector('.job-owner-note');
  const confirm = box.querySelector('[data-role="confirm-delete"]');
  const id = () => box.dataset.jobId;
  const failed = (what) => (error) => { note.textContent = `Could not ${what}: ${error.message}`; };

  box.querySelector('[data-action="delete"]').addEventListener('click', () => {
    confirm.hidden = false;
    confirm.querySelector('[data-action="confirm-delete"]').focus();
  });
  box.querySelector('[data-action="keep-job"]').addEventListener('click', () => { confirm.hidden = true; });
  box.querySelector('[data-action="confirm-delete"]').addEventListener('click', async (event) => {
    event.target.disabled = true;
    try {
      await deleteJob(id());
      hooks.onDeleted(id());
    } catch (error) {
      if (error.status === 404) hooks.onDeleted(id()); // gone already (another tab)
      else failed('delete')(error);
      event.target.disabled = false;
    }
  });
  box.querySelector('[data-action="share"]').addEventListener('click', async () => {
    try {
      const share = await createShare(id());
      await copy(new URL(share.url, location.href).href, note, 'Share link copied: anyone with it can watch and '
        + 'download this model, nothing more.');
      hooks.onChanged(id());
    } catch (error) {
      failed('share')(error);
    }
  });
  box.querySelector('[data-action="publish"]').addEventListener('click', async (event) => {
    const publishing = event.target.dataset.published !== 'true';
    try {
      await (publishing ? publishJob(id()) : unpublishJob(id()));
      note.textContent = publishing ? 'Published: every visitor can now pick it in Watch.' : 'No longer public.';
      hooks.onChanged(id());
    } catch (error) {
      failed(publishing ? 'publish' : 'unpublish')(error);
    }
  });
  box.querySelector('.job-shares').addEventListener('click', async (event) => {
    const token = event.target.dataset.revoke;
    if (!token) return;
    try {
      await revokeShare(id(), token);
      note.textContent = 'Share link revoked: it no longer opens anything.';
      hooks.onChanged(id());
    } catch (error) {
      failed('revoke the link')(error);
    }
  });
  return box;
}

/** Follows the job record: hidden for a job this browser does not own (a share, the gallery). */
export function updateOwnerActions(box, job) {
  box.dataset.jobId = job.id;
  const access = job.access;
  box.hidden = !access?.mine;
  if (!access?.mine) return;
  const hasModel = Boolean(job.links.model_file);
  const publish = box.querySelector('[data-action="publish"]');
  publish.hidden = !(FINISHED.has(job.status) && hasModel);
  publish.dataset.published = String(Boolean(access.published));
  publish.textContent = access.published ? 'Unpublish' : 'Publish';
  box.querySelector('[data-action="share"]').hidden = !hasModel;

  const list = box.querySelector('.job-shares');
  const shown = [...list.children].map((li) => li.dataset.token).join();
  if (shown !== access.shares.join()) {
    list.replaceChildren(...access.shares.map((token) => {
      const li = document.createElement('li');
      li.dataset.token = token;
      const link = document.createElement('a');
      link.href = `/s/${encodeURIComponent(token)}`;
      link.textContent = `Share link …${token.slice(-6)}`;
      const revoke = document.createElement('button');
      revoke.type = 'button';
      revoke.className = 'small';
      revoke.dataset.revoke = token;
      revoke.textContent = 'Revoke';
      li.append(link, ' ', revoke);
      return li;
    }));
  }
  const expiry = box.querySelector('.job-expiry');
  expiry.hidden = access.expires_at == null;
  expiry.textContent = access.expires_at == null ? ''
    : `Deleted automatically on ${new Date(access.expires_at * 1000).toLocaleDateString()} unless you share or `
      + 'publish it.';
}

async function copy(text, note, done) {
  try {
    await navigator.clipboard.writeText(text);
    note.textContent = done;
  } catch {
    note.textContent = `Copy this share link: ${text}`; // no clipboard (e.g. plain http on another host)
  }
}
