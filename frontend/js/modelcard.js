// The model card on the page (GET /api/models/{id}/card, docs/model-format.md#model-card): what the model
// does, in words next to its goal, a one-line suggestion when it misses the goal, and the card's small
// pictures on demand. Shown on each finished job's card and under the model in Watch.

import { ApiError, getCard } from './api.js';
import { latestWins } from './latest.js';

const LEVELS = ['grows', 'persists', 'regrows'];
const GOAL_WORDS = { grows: 'grow', persists: 'persist', regrows: 'regrow' };
const BUSY_RETRY_MS = 2000; // the server's render pool is full (503): ask again after this
const BUSY_TRIES = 15;
// The card's pictures, in the order a reader follows the story: grown, left running, cut, turned.
const PICTURES = [
  ['growth', 'image', (c) => `grown, ${c.steps} steps`],
  ['steps_1000', 'image', () => '1000 steps'],
  ['steps_2000', 'image', () => '2000 steps'],
  ['cut_centre', 'cut_image', () => 'centre cut'],
  ['cut_centre', 'image', () => '200 steps later'],
  ['cut_edge', 'cut_image', () => 'edge cut'],
  ['cut_edge', 'image', () => '200 steps later'],
  ['angle_45', 'image', () => 'turned 45°'],
  ['angle_90', 'image', () => 'turned 90°'],
];

// Cards are computed by the server, seconds each on a small machine: one request at a time from this page.
let queue = Promise.resolve();
function queued(task) {
  const run = queue.then(task, task);
  queue = run.catch(() => {});
  return run;
}

/** What the card says, as a sentence: the verdict beside the goal ("Regrows, as trained."). */
export function verdictText(card) {
  const { verdict, goal, does = {}, checks = {} } = card;
  const trained = `trained to ${GOAL_WORDS[goal] || goal}`;
  if (card.meets_goal) return `${capital(verdict)}, as trained.`;
  if (!does.grows) return `Does not grow its pattern yet (${trained}).`;
  if (!does.persists && LEVELS.indexOf(goal) >= 1) {
    const when = checks.steps_1000?.passed ? 'past 1000 steps' : 'for 1000 steps';
    return `Grows, but does not yet hold its shape ${when} (${trained}).`;
  }
  const cuts = ['cut_centre', 'cut_edge'].filter((name) => checks[name] && !checks[name].passed);
  const which = cuts.length === 2 ? 'a cut' : (cuts[0] === 'cut_edge' ? 'an edge cut' : 'a centre cut');
  return `Grows and holds its shape, but does not yet repair ${which} (${trained}).`;
}

/** What to do about a missed goal, in one line; '' when the goal is met. */
const BATTERY = [['swipes', 'five eraser swipes'], ['half', 'half cut away'], ['hidden_noise', 'noise inside'],
  ['steps_5000', '5,000 steps']];

/** The damage battery in one line: what the model survives and what it does not (card.battery). */
export function batteryText(card) {
  const results = BATTERY.filter(([name]) => card.battery?.[name]);
  if (!results.length) return '';
  const word = ([name, label]) => {
    const r = card.battery[name];
    return r.regrown_steps ? `${label} (regrown in ${r.regrown_steps} steps)` : label;
  };
  const yes = results.filter(([name]) => card.battery[name].survives).map(word);
  const no = results.filter(([name]) => !card.battery[name].survives).map(([, label]) => label);
  return [yes.length && `Survives ${yes.join(', ')}.`, no.length && `Does not survive ${no.join(', ')}.`]
    .filter(Boolean).join(' ') + (card.model?.start_from ? ` Started from ${card.model.start_from}.` : '');
}

export function suggestionText(card) {
  if (card.meets_goal) return '';
  const { does = {} } = card;
  const longer = 'train it longer (more iterations, or a longer training time than Quick look)';
  if (!does.grows) return `Next: ${longer}: it has not learned to grow its pattern yet.`;
  if (!does.persists) {
    return `Next: ${longer}; the pool of grown states then teaches it to keep its shape. The CLI continues `
      + 'a model file where it stopped (python -m backend.nca train … --resume).';
  }
  return `Next: ${longer} with the regenerating experiment, which cuts its grown states while it learns.`;
}

/**
 * A card summary inside `box` (an element of its own). `show(ref)` reads the card of that model or
 * checkpoint; `show(null, text)` shows only `text` (e.g. while a job trains: no card yet).
 */
export function createCardView(box) {
  box.classList.add('model-card');
  box.innerHTML = `
    <p class="verdict" role="status" aria-live="polite"></p>
    <p class="suggestion" hidden></p>
    <p class="battery hint" hidden></p>
    <details class="card-pictures" hidden>
      <summary>Its pictures: growth, long runs, cuts, rotation</summary>
      <div class="card-gallery"></div>
    </details>`;
  const verdict = box.querySelector('.verdict');
  const suggestion = box.querySelector('.suggestion');
  const battery = box.querySelector('.battery');
  const pictures = box.querySelector('.card-pictures');
  const gallery = box.querySelector('.card-gallery');
  const requests = latestWins();
  let shown = null; // the ref whose card is on screen (or on its way)
  let waiting = null; // a ref to load once the box scrolls into view
  let card = null;
  // A card costs the server seconds to compute: a long job list asks only for the ones scrolled to.
  const observer = new IntersectionObserver((entries) => {
    if (!waiting || !entries.some((entry) => entry.isIntersecting)) return;
    const ref = waiting;
    waiting = null;
    load(ref);
  });
  observer.observe(box);

  function clear(text) {
    card = null;
    verdict.textContent = text;
    delete verdict.dataset.meets;
    suggestion.hidden = true;
    battery.hidden = true;
    pictures.hidden = true;
    pictures.open = false;
    gallery.replaceChildren();
  }

  async function load(ref) {
    const ticket = requests.next();
    clear('Evaluating the model: growth, long runs, cuts (a few seconds)…');
    box.setAttribute('aria-busy', 'true');
    let answer = null;
    let failure = '';
    for (let tries = 0; tries < BUSY_TRIES && ticket.current(); tries += 1) {
      try {
        answer = await queued(() => (ticket.current() ? getCard(ref, ticket.signal) : null));
        break;
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 503) {
          failure = error.message;
          break;
        }
        await new Promise((resolve) => { setTimeout(resolve, BUSY_RETRY_MS); });
      }
    }
    if (!ticket.current()) return;
    box.removeAttribute('aria-busy');
    if (!answer) {
      shown = null; // asked again at the next show()
      clear(`No model card: ${failure || 'the server is busy; try again shortly.'}`);
      return;
    }
    card = answer;
    verdict.textContent = verdictText(card);
    verdict.dataset.meets = String(Boolean(card.meets_goal));
    suggestion.textContent = suggestionText(card);
    suggestion.hidden = !suggestion.textContent;
    battery.textContent = batteryText(card);
    battery.hidden = !battery.textContent;
    pictures.hidden = false;
  }

  // The pictures are built when first opened: a card holds a dozen data URLs nobody may look at.
  pictures.addEventListener('toggle', () => {
    if (!pictures.open || !card || gallery.childElementCount) return;
    gallery.replaceChildren(...PICTURES.flatMap(([name, field, caption]) => {
      const check = card.checks?.[name];
      const src = field === 'image' ? check?.image : check?.extra?.[field];
      if (!src) return [];
      const figure = document.createElement('figure');
      figure.dataset.check = name;
      const image = document.createElement('img');
      image.className = 'pixels';
      image.src = src;
      image.alt = `${caption(check)}: ${check.passed ? 'passed' : 'did not pass'}`;
      image.width = 72;
      image.height = 72;
      const text = document.createElement('figcaption');
      const mark = field === 'cut_image' ? '' : (check.passed ? ' ✓' : ' ✗');
      text.textContent = `${caption(check)}${mark}`;
      figure.append(image, text);
      return [figure];
    }));
  });

  return {
    show(ref, text = '') {
      if (ref === null) {
        requests.cancel();
        shown = null;
        waiting = null;
        box.removeAttribute('aria-busy');
        clear(text);
        box.hidden = !text;
        return;
      }
      box.hidden = false;
      if (ref === shown) return;
      shown = ref;
      requests.cancel();
      clear('');
      waiting = ref; // loaded by the observer, at once if the box is in view
      observer.unobserve(box);
      observer.observe(box);
    },
  };
}

const capital = (word) => word.charAt(0).toUpperCase() + word.slice(1);
