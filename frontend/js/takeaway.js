// "Take it with you": a model's exports from the page (docs/api.md#take-it-with-you-exports-videos-and-the-model-card):
// the one-file player (open in a tab, or download), the Distill demo's JSON with what 8 bits did to it,
// GIF / animated WebP / MP4 rendered by the server (with a progress line meanwhile), and the model file.
// On the job card (the job's latest model) and in Watch (the model or checkpoint playing).

import { getFile } from './api.js';
import { bytesText, duration, modelPath } from './formats.js';
import { latestWins } from './latest.js';

const VIDEOS = [['gif', 'GIF'], ['webp', 'WebP'], ['mp4', 'MP4']];
// The article's demo loads its models by fixed names: webgl_models8/ex<N>_<emoji>.json (docs/model-format.md).
const DEMO_EXPERIMENT = { growing: 'ex1', persistent: 'ex2', regenerating: 'ex3' };

/** The menu inside `box` (an element of its own); `setModel(ref, {experiment})` points it at a model. */
export function createTakeaway(box) {
  box.classList.add('takeaway');
  box.innerHTML = `
    <details>
      <summary>Take it with you</summary>
      <div class="takeaway-body">
        <p class="takeaway-row"><span class="takeaway-what">Web player, one HTML file (runs offline)</span>
          <a class="button small" data-export="player-open" target="_blank" rel="noopener">Open</a>
          <a class="button small" data-export="player" download>Download</a></p>
        <p class="takeaway-row"><span class="takeaway-what">For the article's demo (8-bit JSON)</span>
          <button type="button" class="small" data-export="distill">Download</button></p>
        <p class="takeaway-row"><span class="takeaway-what">Growth, a cut and regrowth</span>
          ${VIDEOS.map(([fmt, label]) => `<button type="button" class="small" data-export="${fmt}">${label}</button>`)
    .join(' ')}</p>
        <p class="takeaway-row"><span class="takeaway-what">Model file (.safetensors)</span>
          <a class="button small" data-export="model" download>Download</a></p>
        <div class="takeaway-progress" hidden>
          <progress aria-label="The server is making the file"></progress>
          <span role="status" aria-live="polite"></span>
        </div>
        <p class="takeaway-note" hidden></p>
        <p class="takeaway-error error" role="alert" hidden></p>
        <div class="takeaway-preview" hidden></div>
      </div>
    </details>`;
  const $ = (selector) => box.querySelector(selector);
  const progress = $('.takeaway-progress');
  const progressText = progress.querySelector('span');
  const note = $('.takeaway-note');
  const error = $('.takeaway-error');
  const preview = $('.takeaway-preview');
  const requests = latestWins();
  let ref = null;
  let shownVersion = null; // the model version the menu's notes and previews are of
  let experiment = null;
  let objectUrl = null; // the last file made here, released when the next one comes

  function reset() {
    requests.cancel();
    progress.hidden = true;
    note.hidden = true;
    error.hidden = true;
    preview.hidden = true;
    preview.replaceChildren();
    for (const button of box.querySelectorAll('button')) button.disabled = false;
  }

  /** Fetch an export with a progress line, then save it and return it; null if a newer request came. */
  async function fetchExport(path, what) {
    const ticket = requests.next();
    const started = performance.now();
    note.hidden = true;
    error.hidden = true;
    preview.hidden = true;
    progress.hidden = false;
    const tick = () => {
      progressText.textContent = `${what}… ${duration((performance.now() - started) / 1000, { exact: true })}`;
    };
    tick();
    const timer = setInterval(tick, 500);
    try {
      const file = await getFile(path, ticket.signal);
      if (!ticket.current()) return null;
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(file.blob);
      save(objectUrl, file.filename);
      return { ...file, url: objectUrl };
    } catch (failure) {
      if (ticket.current()) {
        error.textContent = `Could not make it: ${failure.message}`;
        error.hidden = false;
      }
      return null;
    } finally {
      clearInterval(timer);
      if (ticket.current()) progress.hidden = true;
    }
  }

  async function distill(button) {
    button.disabled = true;
    const file = await fetchExport(modelPath(ref, '/distill.json'), 'Quantising to 8 bits and checking it still grows');
    button.disabled = false;
    if (!file) return;
    const h = (name) => file.headers.get(`x-quantization-${name}`);
    const code = DEMO_EXPERIMENT[experiment] || 'ex3';
    const grows = h('grows-8bit') === 'false' ? ' It no longer grows in 8 bits.' : '';
    note.replaceChildren(
      text(`Saved ${file.filename}. In 8 bits it grows to ${h('psnr-8bit')} dB (${h('psnr-float')} dB as trained).`
        + grows),
    );
    if (h('warning')) note.append(strong(` Note: ${h('warning')}`));
    note.append(text(` To play it in the article's demo: the demo loads its models by fixed names, `
      + 'webgl_models8/ex1_… (growing), ex2_… (persistent) and ex3_… (regenerating) followed by an emoji; '
      + `save this file as webgl_models8/${code}_🦎.json (the lizard's place: any of its emoji works the same `
      + `way) and pick the lizard with experiment ${code.slice(2)}.`));
    note.hidden = false;
  }

  async function video(button, fmt, label) {
    for (const [other] of VIDEOS) box.querySelector(`[data-export="${other}"]`).disabled = true;
    const file = await fetchExport(modelPath(ref, `/video.${fmt}`), `The server renders the ${label}`);
    for (const b of box.querySelectorAll('button')) b.disabled = false;
    if (!file) return;
    const shown = fmt === 'mp4' ? document.createElement('video') : document.createElement('img');
    shown.src = file.url;
    shown.className = 'pixels';
    if (fmt === 'mp4') {
      Object.assign(shown, { controls: true, muted: true, loop: true, autoplay: true, playsInline: true });
    }
    else shown.alt = `The ${label}: growth, a cut and regrowth`;
    const link = document.createElement('a');
    link.href = file.url;
    link.download = file.filename;
    link.textContent = `Save ${file.filename} again (${bytesText(file.blob.size)})`;
    preview.replaceChildren(shown, link);
    preview.hidden = false;
  }

  box.querySelector('[data-export="distill"]').addEventListener('click', (event) => distill(event.currentTarget));
  for (const [fmt, label] of VIDEOS) {
    box.querySelector(`[data-export="${fmt}"]`)
      .addEventListener('click', (event) => video(event.currentTarget, fmt, label));
  }

  return {
    /**
     * Point every export at `newRef` (a model id or `<job id>@<iteration>`); null hides the menu. `version`
     * (the model's, which a training job's new checkpoint raises) drops what was made of an older one.
     */
    setModel(newRef, { experiment: newExperiment = null, version = null } = {}) {
      box.hidden = !newRef;
      experiment = newExperiment;
      if (newRef === ref && version === shownVersion) return;
      ref = newRef;
      shownVersion = version;
      reset();
      if (!ref) return;
      $('[data-export="player-open"]').href = modelPath(ref, '/player.html?inline=true');
      $('[data-export="player"]').href = modelPath(ref, '/player.html');
      $('[data-export="model"]').href = modelPath(ref, '/file');
    },
  };
}

function save(url, filename) {
  const link = document.createElement('a');
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
}

const text = (value) => document.createTextNode(value);
function strong(value) {
  const element = document.createElement('strong');
  element.textContent = value;
  return element;
}
