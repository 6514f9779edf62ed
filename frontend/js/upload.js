// The Train view: pick or drop an image, see it before and after processing, choose options, submit.

import { createJob, previewTarget, setAccessToken } from './api.js';
import { initBudget, presetMinutes } from './budget.js';
import { bytesText } from './formats.js';
import { latestWins } from './latest.js';
import { deviceSide, drawCells } from './pixels.js';
import { drawPhoto, frameImage, targetOnWhite } from './target.js';

const FALLBACK_EXPERIMENTS = {
  growing: 'Learns to grow the image from one cell; what happens after that is not trained.',
  persistent: 'Also learns to keep the grown pattern stable for a long time.',
  regenerating: 'Also learns to regrow parts that get erased (try it in the Watch view).',
};
const DEFAULT_EXPERIMENT = 'regenerating';
const PREVIEW_SIDE = 288; // CSS pixels
const PREVIEW_DELAY_MS = 300; // typing a size: ask the server once the typing pauses
const PREVIEW_FIELDS = ['target_size', 'padding', 'background']; // the options that shape the target
const BACKGROUND_DONE = {
  cutout: 'The subject was cut out of your photo; “Keep the whole image” turns this off.',
  key: 'Pixels close to the border colour became empty.',
  keep: 'Your image already has a transparent background: it is used as it is.',
};

/**
 * Wire up the form. `config` is GET /api/config; `onCreated(job)` runs after a job is accepted. Returns
 * {show}: the view is shown again (its estimate asks the server anew: the queue has moved on).
 */
export function initUpload(config, onCreated) {
  const form = document.getElementById('upload-form');
  const input = document.getElementById('image-input');
  const dropZone = document.getElementById('drop-zone');
  const fileName = document.getElementById('file-name');
  const errorBox = document.getElementById('upload-error');
  const statusLine = document.getElementById('upload-status');
  const submit = document.getElementById('submit-job');
  const previewBox = document.querySelector('.preview');
  const before = document.getElementById('original-preview');
  const after = document.getElementById('target-preview');
  const frame = document.getElementById('image-frame');
  const caption = document.getElementById('preview-caption');
  const note = document.getElementById('preview-note');
  const hint = document.getElementById('background-hint');
  const defaultHint = hint.textContent;
  let file = null;
  let bitmap = null; // the chosen image, decoded here for the "before" picture
  let preview = null; // the server's latest answer for it: {answer, image}, or {error, final}
  const previews = latestWins(); // an older answer must not win; the request in flight is aborted by a newer one
  let timer = null;

  renderExperiments(config.experiments || FALLBACK_EXPERIMENTS);
  addOptionFields(form, config.options || []);
  applyDefaults(form, config.defaults || {});
  applyOptions(form, config.options || []);
  const budget = initBudget(form, config, () => Object.fromEntries(jobOptions(form, config)));

  const tokenInput = document.getElementById('access-token');
  document.getElementById('token-field').hidden = !config.auth_required;
  tokenInput.value = localStorage.getItem('nca-access-token') || '';
  setAccessToken(tokenInput.value);
  tokenInput.addEventListener('input', () => {
    setAccessToken(tokenInput.value);
    localStorage.setItem('nca-access-token', tokenInput.value.trim()); // asked once, kept for later visits
    if (preview?.error) schedulePreview(); // refused for want of the token: try again with it
  });

  const showError = (message) => {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  };

  async function useFile(chosen) {
    showError('');
    previews.cancel(); // an answer about the previous file is of no use now
    file = chosen;
    bitmap?.close(); // a decoded photo can hold hundreds of MB: free it now, not at some later GC
    bitmap = null;
    preview = null;
    fileName.textContent = chosen ? `${chosen.name} (${bytesText(chosen.size)})` : '';
    if (chosen && config.max_upload_bytes && chosen.size > config.max_upload_bytes) {
      const limit = `This file is ${bytesText(chosen.size)}; the limit is ${bytesText(config.max_upload_bytes)}.`;
      showError(limit);
      preview = { error: limit, final: true }; // no point asking the server
    } else if (chosen) {
      requestPreview();
    }
    render();
    if (!chosen) return;
    let decoded = null;
    try {
      decoded = await createImageBitmap(chosen);
    } catch {
      decoded = null; // not decodable here; the server has the final word and its preview says so
    }
    if (file !== chosen) {
      decoded?.close();
      return;
    }
    bitmap = decoded;
    render();
  }

  /** Ask the server what the file becomes with the current options; the latest request wins. */
  async function requestPreview() {
    clearTimeout(timer);
    if (!file) return;
    const ticket = previews.next();
    previewBox.setAttribute('aria-busy', 'true');
    let next;
    try {
      const answer = await previewTarget(previewData(form, file), ticket.signal);
      next = { answer, image: await targetOnWhite(answer.png) };
    } catch (error) {
      next = { error: error.message };
    }
    if (!ticket.current()) return; // a newer request (or file) took over
    previewBox.removeAttribute('aria-busy');
    preview = next;
    render();
  }

  function schedulePreview() {
    clearTimeout(timer);
    if (file && !preview?.final) timer = setTimeout(requestPreview, PREVIEW_DELAY_MS);
  }

  /** Both pictures, the caption, the server's warning and the background hint, from the current state. */
  function render() {
    before.closest('figure').hidden = !bitmap;
    if (bitmap) drawPhoto(before, bitmap, deviceSide(before, PREVIEW_SIDE / 2));
    after.closest('figure').hidden = !preview?.image;
    let text = 'Choose an image to see the target: downscaled, on white, with the empty border the pattern '
      + 'grows into.';
    let warning = '';
    hint.textContent = defaultHint;
    if (file && !preview) {
      text = 'Preparing the target…';
    } else if (preview?.error) {
      text = 'The server cannot prepare this image:';
      warning = preview.error;
    } else if (preview) {
      const { image, answer } = preview;
      const { padding } = answer;
      drawCells(after, image, deviceSide(after, PREVIEW_SIDE));
      frameImage(frame, answer);
      text = `The image becomes ${answer.grid_width - 2 * padding}×${answer.grid_height - 2 * padding} cells on a `
        + `${answer.grid_width}×${answer.grid_height} grid, and the pattern fills ${formatShare(answer.filled)} `
        + 'of it: the dashed line frames the image, the empty border around it is room to grow into.';
      warning = answer.warning || '';
      if (!warning) hint.textContent = BACKGROUND_DONE[answer.background];
    }
    caption.textContent = text;
    note.textContent = warning && warning[0].toUpperCase() + warning.slice(1);
    note.dataset.kind = preview?.error ? 'error' : 'warning';
    note.hidden = !warning;
  }

  input.addEventListener('change', () => useFile(input.files[0] || null));
  for (const name of PREVIEW_FIELDS) {
    const field = form.elements[name];
    field.addEventListener(field.tagName === 'SELECT' ? 'change' : 'input', schedulePreview);
  }
  window.addEventListener('resize', () => { if (file) render(); });
  render();

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
      const job = await createJob(formData(form, file, config));
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
  /** #train/<model>: the next job starts from that model (start_from, shown open in Advanced); null: unchanged. */
  function startFrom(ref) {
    const field = form.elements.start_from;
    if (!ref || !field) return;
    field.value = ref;
    field.closest('details')?.setAttribute('open', '');
    statusLine.textContent = `The next job starts from ${ref}: choose its picture.`;
  }

  return { show: budget.refresh, startFrom };
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
    if (!(field instanceof RadioNodeList) && field.closest('[data-generated]')) continue; // its placeholder says it
    if (field instanceof RadioNodeList) {
      for (const radio of field) radio.checked = radio.value === String(value);
    } else if (field.type === 'checkbox') {
      field.checked = Boolean(value);
    } else {
      field.value = value;
    }
  }
}

// Options with a field of their own elsewhere on the form: the training-time choice sets `minutes`.
const OPTIONS_ELSEWHERE = new Set(['minutes']);

/**
 * A field in *Advanced options* for every job option the page has none for, built from the server's
 * option schema (GET /api/config `options`: backend.nca.jobspec.option_schema). It starts empty, its
 * placeholder saying what the job gets then, so only what a person types is sent: a new option of the
 * spec (early_stop_patience, say) appears here with no change to the page.
 */
function addOptionFields(form, options) {
  const row = form.querySelector('details.advanced .field-row');
  for (const option of options) {
    if (form.elements[option.name] || OPTIONS_ELSEWHERE.has(option.name)) continue;
    const id = `option-${option.name.replaceAll('_', '-')}`;
    const box = document.createElement('div');
    box.className = 'field';
    box.dataset.generated = option.name;
    const label = document.createElement('label');
    label.htmlFor = id;
    label.textContent = option.name[0].toUpperCase() + option.name.slice(1).replaceAll('_', ' ');
    const field = option.choices ? document.createElement('select') : document.createElement('input');
    if (option.choices) {
      const unset = new Option(option.default == null ? 'default' : `default (${option.default})`, '');
      field.append(unset, ...option.choices.map((choice) => new Option(choice, choice)));
    } else if (option.kind === 'boolean') {
      field.type = 'checkbox';
    } else {
      field.type = option.kind === 'text' ? 'text' : 'number';
      if (option.kind === 'integer') field.step = '1';
      if (option.kind === 'number') field.step = 'any';
      field.placeholder = option.default == null ? 'off' : String(option.default);
    }
    Object.assign(field, { id, name: option.name });
    const hint = document.createElement('span');
    hint.className = 'hint';
    hint.id = `${id}-hint`;
    hint.textContent = option.help[0].toUpperCase() + option.help.slice(1) + '.';
    field.setAttribute('aria-describedby', hint.id);
    box.append(label, field, hint);
    row.append(box);
  }
}

/** Every field takes the spec's bounds (spinner steps, what assistive tech announces) and its help as a tooltip. */
function applyOptions(form, options) {
  for (const option of options) {
    const field = form.elements[option.name];
    if (!field || field instanceof RadioNodeList) continue;
    if (!field.title) field.title = option.help;
    if (field.type !== 'number') continue;
    const min = option.min ?? option.above;
    if (min != null) field.min = min;
    if (option.max != null) field.max = option.max;
  }
}

/** What the preview needs: the image and the options that shape the target (nothing else to validate). */
function previewData(form, file) {
  const data = new FormData();
  data.append('image', file, file.name);
  for (const name of PREVIEW_FIELDS) {
    const value = form.elements[name].value.trim();
    if (value !== '') data.append(name, value);
  }
  return data;
}

/**
 * The job options the form asks for, as [name, value] pairs: every enabled, filled-in field (numbers as
 * numbers) plus a preset time budget's minutes. The training-time choice itself is the form's, no option.
 * The upload and the estimate both send these, so the estimate is for the job the upload would start.
 */
function jobOptions(form, config) {
  const options = [];
  for (const field of form.elements) {
    if (!field.name || field.name === 'image' || field.name === 'budget' || field.disabled) continue;
    if (field.type === 'radio' && !field.checked) continue;
    const value = field.value.trim();
    if (field.type === 'checkbox') options.push([field.name, field.checked]);
    else if (value !== '') options.push([field.name, field.type === 'number' ? Number(value) : value]);
  }
  const minutes = presetMinutes(form, config);
  if (minutes != null) options.push(['minutes', minutes]);
  return options;
}

/** The upload as multipart: the image plus every option as a form field. */
function formData(form, file, config) {
  const data = new FormData();
  data.append('image', file, file.name);
  for (const [name, value] of jobOptions(form, config)) data.append(name, String(value));
  return data;
}

function formatShare(share) {
  return `${(share * 100).toFixed(1)} %`;
}
