// Entry point: read the server's config, wire the three views, and switch between them by URL
// hash (#train, #jobs, #watch, #watch/<model id>).

import { createJob, getConfig } from './api.js';
import { initJobs } from './jobs.js';
import { initOwnerPanel } from './owner.js';
import { initRoomButton } from './rooms.js';
import { initUpload } from './upload.js';
import { initWatch } from './watch.js';

const VIEWS = ['train', 'jobs', 'watch'];
// #train/<model> opens the Train form starting from that model (a new picture from it); #continue/<model>
// queues a job that continues it on its own target, then shows the Jobs view.

async function main() {
  let config;
  try {
    config = await getConfig();
  } catch (error) {
    config = {};
    showPageError(`The server did not send its settings (${error.message}). Some things may not work.`);
  }
  const watch = initWatch(config);
  initRoomButton();
  const jobs = initJobs((modelId) => { location.hash = `#watch/${encodeURIComponent(modelId)}`; });
  const upload = initUpload(config, (job) => {
    jobs.add(job);
    location.hash = '#jobs';
  });

  initOwnerPanel(() => location.reload()); // a first visit gets its owner; a pasted token brings its jobs

  let current = null;
  function route() {
    const [name, arg] = location.hash.replace(/^#/, '').split('/');
    if (name === 'continue' && arg) {
      continueJob(decodeURIComponent(arg), jobs);
      return;
    }
    const view = VIEWS.includes(name) ? name : 'train';
    for (const v of VIEWS) document.getElementById(`view-${v}`).hidden = v !== view;
    for (const link of document.querySelectorAll('[data-view-link]')) {
      if (link.dataset.viewLink === view) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    if (current === 'watch' && view !== 'watch') watch.hide();
    if (view === 'watch') watch.show(arg ? decodeURIComponent(arg) : null);
    if (view === 'jobs' && current !== 'jobs') jobs.refresh();
    if (view === 'train' && current !== null && current !== 'train') upload.show(); // the queue has moved on
    if (view === 'train') upload.startFrom(arg ? decodeURIComponent(arg) : null);
    if (current !== null && current !== view) document.getElementById(`${view}-title`).focus({ preventScroll: true });
    current = view;
  }
  window.addEventListener('hashchange', route);
  route();
  document.body.dataset.ready = 'true'; // lets tests (and people) know the page is wired up
}

/** Queue a job that continues `ref` on its own target (start_from, no image), then show it among the jobs. */
async function continueJob(ref, jobs) {
  const form = new FormData();
  form.append('start_from', ref);
  try {
    jobs.add(await createJob(form));
  } catch (error) {
    showPageError(`Could not continue ${ref}: ${error.message}`);
  }
  location.hash = '#jobs';
}

function showPageError(message) {
  const box = document.createElement('p');
  box.className = 'error page-error';
  box.setAttribute('role', 'alert');
  box.textContent = message;
  document.querySelector('main').prepend(box);
}

main();
