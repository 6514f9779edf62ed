// The Train form's training time: a time budget (quick look, good, custom minutes) or the paper recipe, and
// a live estimate of how long the job would take on this server (POST /api/estimate) as the options change.

import { estimateJob } from './api.js';
import { roughDuration } from './formats.js';
import { latestWins } from './latest.js';

const ESTIMATE_DELAY_MS = 300; // typing a number: ask the server once the typing pauses
const PAPER = 'paper';
const CUSTOM = 'custom';
// A worker's device (cpu, cuda, cuda:1, mps) in words: what a user knows the server by.
const DEVICE_WORDS = [[/^cuda/, "this server's GPU"], [/^mps/, "this server's Apple GPU"], [/^cpu/, "this server's CPU"]];

/** The minutes a preset budget (quick, good) sends; null for the paper recipe, and for custom, whose own
 * `minutes` field is sent as it is. */
export function presetMinutes(form, config) {
  return config.budgets?.[form.elements.budget.value] ?? null;
}

/**
 * Wire the training-time choice and the estimate line. `collect()` gives the job options the upload would
 * send (no image): the estimate is for exactly that job. Returns {refresh}: ask again (the queue changes
 * while the page is elsewhere).
 */
export function initBudget(form, config, collect) {
  const box = document.getElementById('budget-field');
  const line = document.getElementById('estimate');
  const note = document.getElementById('estimate-note');
  const paperHint = document.getElementById('paper-hint');
  const iterationsHint = document.getElementById('iterations-hint');
  const iterationsText = iterationsHint.textContent;
  const { budget, minutes, iterations } = form.elements;
  const recipeFields = Object.keys(config.budget_defaults || {}); // batch and pool: they differ between recipes
  const paperText = paperRecipe(config.defaults || {});
  let budgeted = false; // the Advanced fields start at the paper recipe's values (config.defaults)
  let paperIterations = iterations.value; // given back when the paper recipe is chosen again
  let timer = null;
  const estimates = latestWins(); // the estimate in flight is aborted when newer options ask again

  if (!config.budgets) {
    // A server without time budgets (or no config at all): the paper recipe and iterations, as before.
    box.hidden = true;
    budget.value = PAPER;
    follow();
    return { refresh() {} };
  }
  for (const [name, value] of Object.entries(config.budgets)) {
    const label = box.querySelector(`[data-budget-minutes="${name}"]`);
    if (label) label.textContent = `(≈ ${roughDuration(value * 60)})`;
  }
  budget.value = config.default_budget || 'good';
  if (!budget.value) budget.value = PAPER; // a choice this page does not know
  showPaperHint(config.paper_minutes == null ? null : config.paper_minutes * 60);
  follow();

  /** Fields follow the choice: minutes only for custom, iterations only for the paper recipe, and the
   * batch and pool sizes of the recipe chosen when it changes between a budget and the paper recipe. */
  function follow() {
    const choice = budget.value;
    const isBudget = choice !== PAPER;
    minutes.disabled = choice !== CUSTOM;
    iterations.disabled = isBudget; // disabled fields are not sent: a budget plans the iterations itself
    iterationsHint.textContent = isBudget ? 'Planned by the server to fit the training time.' : iterationsText;
    if (isBudget !== budgeted) {
      // With a budget the field shows the plan's count (from the estimate), not a number it will not train.
      if (isBudget) paperIterations = iterations.value;
      iterations.value = isBudget ? '' : paperIterations;
      iterations.placeholder = isBudget ? 'planned' : '';
      for (const name of recipeFields) {
        const value = isBudget ? config.budget_defaults[name] : config.defaults?.[name];
        if (value != null && form.elements[name]) form.elements[name].value = value;
      }
    }
    budgeted = isBudget;
  }

  function showPaperHint(seconds) {
    paperHint.textContent = seconds == null ? `${paperText}.` : `${paperText}: ≈ ${roughDuration(seconds)} here.`;
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(request, ESTIMATE_DELAY_MS);
  }

  /** Ask the server about the current options; the latest request wins. */
  async function request() {
    clearTimeout(timer);
    const ticket = estimates.next();
    line.setAttribute('aria-busy', 'true');
    let answer = null;
    let error = null;
    try {
      answer = await estimateJob(collect(), ticket.signal);
    } catch (failure) {
      error = failure;
    }
    if (!ticket.current()) return; // newer options asked again (this one was aborted or is stale)
    line.removeAttribute('aria-busy');
    show(answer, error);
  }

  function show(answer, error) {
    let text;
    let warning = '';
    if (error) {
      text = capitalise(error.message); // a 422 names the field and what is wrong with it
    } else if (answer.seconds == null) {
      text = 'No worker is running: the job waits until one starts.';
    } else {
      const where = DEVICE_WORDS.find(([pattern]) => pattern.test(answer.device || ''))?.[1]
        ?? `this server's ${answer.device || 'worker'}`;
      const its = answer.iterations == null ? '' : ` (${answer.iterations.toLocaleString()} iterations)`;
      text = `≈ ${roughDuration(answer.seconds)}${its} on ${where}, ${queue(answer)}`;
      if (answer.long) {
        warning = budget.value === PAPER
          ? `The paper recipe takes about ${roughDuration(answer.seconds)} on ${where}: a time budget shows a `
            + 'pattern in minutes.'
          : `This trains for about ${roughDuration(answer.seconds)} on ${where}, more than half an hour: `
            + 'Quick look or Good shows a pattern in minutes.';
      }
      if (answer.paper_seconds != null) showPaperHint(answer.paper_seconds); // for this target size
      if (answer.plan && iterations.disabled) iterations.placeholder = answer.iterations.toLocaleString();
    }
    line.textContent = text;
    line.dataset.kind = error ? 'error' : '';
    note.textContent = warning;
    note.hidden = !warning;
  }

  budget.forEach((radio) => radio.addEventListener('change', follow));
  const onEdit = (event) => { if (event.target.type !== 'file') schedule(); }; // the image does not change it
  form.addEventListener('input', onEdit);
  form.addEventListener('change', onEdit);
  request();
  return { refresh: request };
}

/** The paper recipe in a few words, from the server's defaults. */
function paperRecipe(defaults) {
  const { iterations = 8000, batch_size: batch = 8, pool_size: pool = 1024 } = defaults;
  return `The article's ${iterations.toLocaleString()} iterations, batch ${batch} and pool ${pool}`;
}

/** The jobs before this one, and how long they keep the workers busy. */
function queue(answer) {
  const ahead = answer.jobs_ahead;
  if (!ahead) return 'no jobs ahead';
  const wait = answer.wait_seconds > 0 ? ` (≈ ${roughDuration(answer.wait_seconds)} wait)` : '';
  return `${ahead} job${ahead === 1 ? '' : 's'} ahead${wait}`;
}

const capitalise = (text) => text && text[0].toUpperCase() + text.slice(1);
