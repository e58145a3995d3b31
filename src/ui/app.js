// The dashboard's shell: asks for the API key once per browser session, then routes by the
// URL's hash (`#/`, `#/jobs`, `#/jobs/<source connection>/<job>`), so the server serves one
// page and every view has a link that can be bookmarked or opened in a new tab.
//
// Each view is `mount(root, params, signal)`: it renders into `root` and stops its streams
// and timers when `signal` aborts (on the next navigation).

import { ApiError, forgetKey, get, getKey, setKey, whenKeyRefused } from './api.js';
import { el, notice } from './dom.js';
import * as overview from './overview.js';
import * as jobs from './jobs.js';
import * as job from './job.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const forget = document.getElementById('forget');
let current = null;

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = hash.split('?');
  const parts = path.split('/').filter(Boolean);
  const params = Object.fromEntries(new URLSearchParams(query));
  if (parts[0] === 'jobs' && parts.length === 3) return { view: job, params: { ...params, sc: parts[1], job: parts[2] }, tab: '#/jobs' };
  if (parts[0] === 'jobs') return { view: jobs, params, tab: '#/jobs' };
  return { view: overview, params, tab: '#/' };
}

function show() {
  if (current) current.abort();
  current = new AbortController();
  main.replaceChildren();
  if (!getKey()) {
    login();
    return;
  }
  nav.hidden = false;
  forget.hidden = false;
  const { view, params, tab } = route();
  for (const a of nav.querySelectorAll('a')) {
    if (a.getAttribute('href') === tab) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  view.mount(main, params, current.signal);
}

/** After a navigation, focus moves to the new page's heading (keyboard and screen readers). */
function focusHeading() {
  const h1 = main.querySelector('h1');
  if (h1) {
    h1.setAttribute('tabindex', '-1');
    h1.focus({ preventScroll: true });
  }
}

function login(reason) {
  nav.hidden = true;
  forget.hidden = true;
  const message = notice('alert');
  const input = el('input', {
    id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', required: true,
    'aria-describedby': 'api-key-help',
  });
  const form = el(
    'form', { class: 'card login', 'aria-labelledby': 'login-title' },
    el('h1', { id: 'login-title' }, 'Sign in with an API key'),
    el('label', { for: 'api-key' }, 'API key'),
    input,
    el('p', { id: 'api-key-help', class: 'muted' },
      'Kept for this browser tab only (sessionStorage) and sent as the ', el('code', {}, 'x-api-key'),
      ' header. Create one with ', el('code', {}, 'syncjobs keys create --org NAME'), '.'),
    message.node,
    el('button', { type: 'submit', class: 'primary' }, 'Use this key'),
  );
  if (reason) message.show(reason);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    setKey(key);
    try {
      await get('/collections?limit=1');
      show();
      focusHeading();
    } catch (err) {
      forgetKey();
      message.show(err instanceof ApiError ? err.detail : String(err));
      input.focus();
    }
  });
  main.replaceChildren(form);
  input.focus();
}

whenKeyRefused((err) => {
  forgetKey();
  if (current) current.abort();
  login(`${err.detail}: enter a valid key.`);
});

forget.addEventListener('click', () => {
  forgetKey();
  show();
});

window.addEventListener('hashchange', () => {
  show();
  focusHeading();
});
show();
