// Small DOM and formatting helpers. Elements are built with textContent, never innerHTML,
// so nothing the API returns is ever parsed as markup.

/** el('a', {href: '#/x', class: 'y'}, 'text', child) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export function statusBadge(status) {
  return el('span', { class: `status status-${status}`, 'data-status': status }, status);
}

export const FINAL = new Set(['completed', 'failed', 'cancelled']);
export const STATUSES = ['pending', 'running', 'cancelling', 'completed', 'failed', 'cancelled'];

export function time(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleString(undefined, { hour12: false });
}

export function clock(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  const ms = String(d.getMilliseconds()).padStart(3, '0');
  return `${d.toLocaleTimeString(undefined, { hour12: false })}.${ms}`;
}

export function seconds(s) {
  if (s === null || s === undefined) return '—';
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  const rest = Math.floor(s % 60);
  if (m < 60) return `${m} min ${rest} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Seconds a job has run: its own figure once ended, counted from started_at while live. */
export function jobDuration(job, now = Date.now()) {
  if (job.duration_seconds !== null && job.duration_seconds !== undefined) return job.duration_seconds;
  if (!job.started_at) return null;
  return Math.max(0, (now - Date.parse(job.started_at)) / 1000);
}

/** The last 8 hex digits: enough to tell jobs apart on a screen (a UUIDv7's first digits are
 * the time it was made, the same for ids made together). */
export function shortId(id) {
  return id ? id.slice(-8) : '';
}

export const number = (n) => (n ?? 0).toLocaleString();

/** Runs `fn` over `items` with at most `limit` calls in flight (browsers hold ~6 per host). */
export async function pool(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const at = next++;
      out[at] = await fn(items[at], at);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** setInterval that stops when `signal` aborts (a view's timers end with the view). */
export function every(ms, fn, signal) {
  const t = setInterval(fn, ms);
  signal.addEventListener('abort', () => clearInterval(t));
  return t;
}

/** A message area that screen readers announce; `show(text, kind)` replaces its text. */
export function notice(kind = 'status') {
  const node = el('p', { class: 'notice', role: kind === 'alert' ? 'alert' : 'status', 'aria-live': 'polite' });
  node.hidden = true;
  return {
    node,
    show(text, cls = 'error') {
      node.textContent = text;
      node.className = `notice notice-${cls}`;
      node.hidden = !text;
    },
    clear() {
      node.textContent = '';
      node.hidden = true;
    },
  };
}

/**
 * `fn` at most once per `ms`, the last call always honoured (a burst of events costs one
 * request at its start and one at its end).
 */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}
