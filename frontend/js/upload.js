// The Train view: pick or drop an image, preview the processed target, choose options, submit.

import { createJob, setAccessToken } from './api.js';
import { drawCells, deviceSide } from './pixels.js';
import { isEmptyTarget, prepareTarget, targetImageData } from './target.js';

const FALLBACK_EXPERIMENTS = {
  growing: 'Learns to grow the image from one cell; what happens after that is not trained.',
  persistent: 'Also learns to keep the grown pattern stable for a long time.',
  regenerating: 'Also learns to regrow parts that get erased (try it in the Watch view).',
};
const DEFAULT_EXPERIMENT = 'regenerating';
const PREVIEW_SIDE = 288; // CSS pixels

/**
 * Wire up the form. `config` is GET /api/config; `onCreated(job)` runs after a job is accepted.
 */
export function initUpload(config, onCreated) {
  const form = document.getElementById('upload-form');
  const input = document.getElementById('image-input');
  const dropZone = document.getElementById('drop-zone');
  const fileName = document.getElementById('file-name');
  const errorBox = document.getElementById('upload-error');
  const statusLine = document.getElementById('upload-status');
  const submit = document.getElementById('submit-job');
  const previewCanvas = document.getElementById('target-preview');
  const caption = document.getElementById('preview-caption');
  let file = null;
  let bitmap = null;
  let choice = 0; // counts file choices: a slow decode of an older choice must not win

  renderExperiments(config.experiments || FALLBACK_EXPERIMENTS);
  applyDefaults(form, config.defaults || {});
  applyLimits(form, config.limits || {});

  const tokenInput = document.getElementById('access-token');
  document.getElementById('token-field').hidden = !config.auth_required;
  tokenInput.value = localStorage.getItem('nca-access-token') || '';
  setAccessToken(tokenInput.value);
  tokenInput.addEventListener('input', () => {
    setAccessToken(tokenInput.value);
    localStorage.setItem('nca-access-token', tokenInput.value.trim()); // asked once, kept for later visits
  });

  const showError = (message) => {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  };

  async function useFile(chosen) {
    const mine = ++choice;
    showError('');
    file = chosen;
    bitmap?.close(); // a decoded photo can hold hundreds of MB: free it now, not at some later GC
    bitmap = null;
    fileName.textContent = chosen ? `${chosen.name} (${formatBytes(chosen.size)})` : '';
    if (!chosen) return renderPreview();
    if (config.max_upload_bytes && chosen.size > config.max_upload_bytes) {
      showError(`This file is ${formatBytes(chosen.size)}; the limit is ${formatBytes(config.max_upload_bytes)}.`);
    }
    let decoded = null;
    try {
      decoded = await createImageBitmap(chosen);
    } catch {
      // Not decodable here; the server has the final word and will say what is wrong.
      caption.textContent = 'Your browser cannot preview this file. You can still upload it; the server checks it.';
    }
    if (mine !== choice) {
      decoded?.close();
      return;
    }
    bitmap = decoded;
    renderPreview();
  }

  function renderPreview() {
    const ctx = previewCanvas.getContext('2d');
    previewCanvas.closest('.preview').classList.toggle('empty', !bitmap);
    if (!bitmap) {
      ctx.clearRect(0, 0, previewCanvas.width, previewCanvas.height);
      return;
    }
    const options = {
      size: fieldInt(form.elements.target_size),
      padding: fieldInt(form.elements.padding),
      keyBackground: form.elements.key_background.checked,
    };
    const target = prepareTarget(bitmap, options);
    const scale = drawCells(previewCanvas, targetImageData(target), deviceSide(previewCanvas, PREVIEW_SIDE));
    outlineTarget(previewCanvas, target, options.padding, scale);
    caption.textContent = `The image becomes ${target.cellsW}×${target.cellsH} cells on a `
      + `${target.width}×${target.height} grid: the dashed line frames the image, the empty border around it `
      + 'is room to grow into.'
      + (isEmptyTarget(target) ? ' It is almost fully transparent: there would be nothing to grow.' : '');
  }

  input.addEventListener('change', () => useFile(input.files[0] || null));
  for (const name of ['target_size', 'padding', 'key_background']) {
    form.elements[name].addEventListener('input', renderPreview);
  }
  window.addEventListener('resize', renderPreview);

  // Drag and drop anywhere on the drop zone; the dropped file also becomes the input's file.
  for (const type of ['dragenter', 'dragover']) {
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add('dragging');
    });
  }
  for (const type of ['dragleave', 'drop']) {
    dropZone.addEventListener(type, () => dropZone.classList.remove('dragging'));
  }
  dropZone.addEventListener('drop', (event) => {
    event.preventDefault();
    const dropped = event.dataTransfer.files[0];
    if (!dropped) return;
    const list = new DataTransfer();
    list.items.add(dropped);
    input.files = list.files;
    useFile(dropped);
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!file) {
      showError('Choose an image first.');
      input.focus();
      return;
    }
    showError('');
    submit.disabled = true;
    statusLine.textContent = 'Uploading…';
    try {
      const job = await createJob(formData(form, file));
      statusLine.textContent = 'Job queued.';
      onCreated(job);
    } catch (error) {
      statusLine.textContent = '';
      showError(error.message);
      if (error.status === 401 && config.auth_required) tokenInput.focus();
    } finally {
      submit.disabled = false;
    }
  });
}

function renderExperiments(experiments) {
  const box = document.getElementById('experiment-options');
  box.replaceChildren();
  for (const [name, text] of Object.entries(experiments)) {
    const id = `experiment-${name}`;
    const option = document.createElement('div');
    option.className = 'radio';
    option.innerHTML = `<input type="radio" name="experiment" id="${id}">
      <label for="${id}"><strong></strong><span class="hint"></span></label>`;
    option.querySelector('input').value = name;
    option.querySelector('input').checked = name === DEFAULT_EXPERIMENT;
    option.querySelector('strong').textContent = name[0].toUpperCase() + name.slice(1);
    option.querySelector('.hint').textContent = text;
    box.append(option);
  }
  if (!box.querySelector('input:checked')) box.querySelector('input').checked = true;
}

/** Start every field at the server's default, where it names one. */
function applyDefaults(form, defaults) {
  for (const [name, value] of Object.entries(defaults)) {
    const field = form.elements[name];
    if (!field || value === null || typeof value === 'object') continue;
    if (field instanceof RadioNodeList) {
      for (const radio of field) radio.checked = radio.value === String(value);
    } else if (field.type === 'checkbox') {
      field.checked = Boolean(value);
    } else {
      field.value = value;
    }
  }
}

/** Let the inputs know the server's bounds (spinner steps, and what assistive tech announces). */
function applyLimits(form, limits) {
  for (const [name, bounds] of Object.entries(limits)) {
    const field = form.elements[name];
    if (!field || field.type !== 'number') continue;
    const min = bounds.minimum ?? bounds.exclusiveMinimum;
    const max = bounds.maximum;
    if (min != null) field.min = min;
    if (max != null) field.max = max;
  }
}

/** The upload as multipart: the image plus every filled-in option as a form field. */
function formData(form, file) {
  const data = new FormData();
  data.append('image', file, file.name);
  for (const field of form.elements) {
    if (!field.name || field.name === 'image' || field.disabled) continue;
    if (field.type === 'radio' && !field.checked) continue;
    if (field.type === 'checkbox') data.append(field.name, field.checked ? 'true' : 'false');
    else if (field.value.trim() !== '') data.append(field.name, field.value.trim());
  }
  return data;
}

/** A thin frame around the image part, so the padding the pattern grows into is visible. */
function outlineTarget(canvas, target, padding, scale) {
  if (!padding) return;
  const ctx = canvas.getContext('2d');
  ctx.save();
  ctx.strokeStyle = 'rgba(37, 99, 235, 0.55)';
  ctx.setLineDash([4, 4]);
  ctx.lineWidth = 1;
  ctx.strokeRect(padding * scale + 0.5, padding * scale + 0.5, target.cellsW * scale - 1, target.cellsH * scale - 1);
  ctx.restore();
}

/** A number field's value held within its min/max (the server's limits); its default if unreadable. */
function fieldInt(field) {
  const n = Number.parseInt(field.value, 10);
  const value = Number.isFinite(n) ? n : Number.parseInt(field.defaultValue, 10);
  return Math.min(Math.max(value, Number(field.min)), Number(field.max));
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
