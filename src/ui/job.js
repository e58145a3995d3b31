// One job: what it is now, its counts over time, its event timeline from the log (who, when,
// what), and the job as it was after any event (the server folds it: `.../state?version=N`).
// While it runs, its own event stream feeds the timeline and the chart, and each event
// re-reads the job (at most every 0.5 s). A `cancelling` job shows the watchdog's deadline:
// the recorded request time plus the timeout recorded with it, as the server counts it.

import { ApiError, followJob, get, post } from './api.js';
import { chart, points } from './chart.js';
import {
  FINAL, clock, el, every, jobDuration, notice, number, seconds, shortId, statusBadge, throttle, time,
} from './dom.js';

function countsText(c) {
  if (!c) return '';
  const parts = ['inserted', 'updated', 'deleted', 'kept', 'skipped', 'failed']
    .filter((k) => c[k]).map((k) => `${k} ${number(c[k])}`);
  return parts.length ? parts.join(', ') : 'no entities';
}

/** What an event says, in words. */
function what(e) {
  const d = e.event.data ?? {};
  switch (e.event.type) {
    case 'JobCreated': return `source ${d.short_name}, config ${JSON.stringify(d.config ?? {})}`;
    case 'JobStarted': return `worker ${d.worker || '(unnamed)'}`;
    case 'CancelRequested': return `by ${d.requested_by}; watchdog after ${d.timeout_seconds} s`;
    case 'JobFailed': return `${d.error} (${countsText(d.counts)})`;
    case 'ForceCancelled': return `${d.error} (${countsText(d.counts)})`;
    case 'Cancelled': return `${countsText(d.counts)}${d.note ? `; ${d.note}` : ''}`;
    default: return countsText(d.counts);
  }
}

/** The job's facts; `at` (ms) is the moment they describe, for a live duration. */
function facts(job, at = Date.now()) {
  const rows = [
    ['Status', statusBadge(job.status)],
    ['Started', time(job.started_at)],
    ['Ended', time(job.completed_at)],
    ['Duration', el('span', { 'data-field': 'duration' }, seconds(jobDuration(job, at)))],
    ['Inserted', number(job.entities_inserted)],
    ['Updated', number(job.entities_updated)],
    ['Deleted', number(job.entities_deleted)],
    ['Failed', number(job.entities_failed)],
  ];
  if (job.error) rows.push(['Error', job.error]);
  if (job.error_details) rows.push(['Error details', el('span', { class: 'mono' }, JSON.stringify(job.error_details))]);
  return el('dl', { class: 'facts' }, rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-fact': k.toLowerCase() }, v)]));
}

export function mount(root, { sc, job: jobId }, signal) {
  const base = `/source-connections/${sc}/jobs/${jobId}`;
  const message = notice('alert');
  const cancel = el('button', { type: 'button', class: 'danger' }, 'Cancel job');
  const connection = el('a', { href: '#/' }, shortId(sc));
  const now = el('div', { id: 'job-now' }, el('p', { class: 'muted' }, 'Loading…'));
  const countdown = el('p', { class: 'countdown', id: 'watchdog', role: 'timer', 'aria-live': 'off' });
  countdown.hidden = true;
  const chartBox = el('div', { id: 'job-chart' });
  const timelineBody = el('tbody');
  const stateTitle = el('h2', { id: 'state-title' }, 'State after an event');
  const stateBody = el('div', { id: 'job-state' });
  const back = el('button', { type: 'button' }, '◀ Step back');
  const forward = el('button', { type: 'button' }, 'Step forward ▶');
  const latest = el('button', { type: 'button' }, 'Latest');
  root.append(
    el('p', {}, el('a', { href: '#/jobs' }, '← All jobs')),
    el('h1', {}, 'Job ', el('span', { class: 'mono' }, jobId)),
    el('p', { class: 'muted' }, 'Source connection ', connection),
    message.node,
    el('div', { class: 'grid2' },
      el('section', { class: 'card', 'aria-labelledby': 'now-title' },
        el('h2', { id: 'now-title' }, 'Now'), now, countdown, el('p', {}, cancel)),
      el('section', { class: 'card', 'aria-labelledby': 'chart-title' },
        el('h2', { id: 'chart-title' }, 'Progress'), chartBox,
        el('div', { class: 'legend', 'aria-hidden': 'true' },
          ...['inserted', 'kept', 'updated', 'deleted', 'failed'].map((k) => el('span', {}, el('span', { class: `swatch swatch-${k}` }), k))))),
    el('section', { class: 'card', 'aria-labelledby': 'state-title' },
      stateTitle,
      el('div', { class: 'toolbar' }, back, forward, latest),
      stateBody),
    el('section', { class: 'card', 'aria-labelledby': 'timeline-title' },
      el('h2', { id: 'timeline-title' }, 'Timeline'),
      el('div', { class: 'timeline' },
        el('table', {},
          el('thead', {}, el('tr', {},
            el('th', { scope: 'col', class: 'num' }, 'Version'), el('th', { scope: 'col' }, 'When'),
            el('th', { scope: 'col' }, 'Who'), el('th', { scope: 'col' }, 'What'),
            el('th', { scope: 'col' }, 'Details'), el('th', { scope: 'col' }, el('span', { class: 'muted' }, 'State')))),
          timelineBody))),
  );

  let job = null;
  const events = [];
  let selected = null; // the version shown in the state panel; null: follow the latest

  function renderNow() {
    now.replaceChildren(facts(job));
    renderCountdown();
  }

  // The countdown moves by the clock, not only when an event arrives: a worker that cannot
  // confirm a cancel sends nothing until the watchdog fires.
  const tick = setInterval(() => { if (!countdown.hidden) renderCountdown(); }, 250);
  signal.addEventListener('abort', () => clearInterval(tick));

  function renderCountdown() {
    const request = job?.status === 'cancelling' && [...events].reverse().find((e) => e.event.type === 'CancelRequested');
    if (!request) {
      countdown.hidden = true;
      return;
    }
    const requested = Date.parse(request.recorded_at);
    const deadline = requested + request.event.data.timeout_seconds * 1000;
    const left = (deadline - Date.now()) / 1000;
    countdown.hidden = false;
    countdown.textContent = left > 0
      ? `Watchdog forces "cancelled" in ${seconds(left)} (at ${clock(new Date(deadline).toISOString())}, ` +
        `${request.event.data.timeout_seconds} s after the request recorded at ${clock(request.recorded_at)})`
      : `Watchdog deadline passed ${seconds(-left)} ago: it forces "cancelled" now`;
  }

  let chartFrame = 0;
  function renderChart() {
    chartFrame = 0;
    chartBox.replaceChildren(chart(points(events)));
  }

  function timelineRow(e) {
    const show = el('button', { type: 'button', 'aria-label': `State after version ${e.version}` }, 'State after');
    show.addEventListener('click', () => showState(e.version));
    return el('tr', { 'data-version': e.version },
      el('td', { class: 'num' }, e.version),
      el('td', { title: e.recorded_at }, clock(e.recorded_at)),
      el('td', { class: 'mono' }, e.caused_by ?? '—'),
      el('td', {}, e.event.type),
      el('td', {}, what(e)),
      el('td', {}, show),
    );
  }

  function addEvent(e) {
    events.push(e);
    timelineBody.append(timelineRow(e));
    if (!chartFrame) chartFrame = requestAnimationFrame(renderChart);
    if (selected === null) latestState();
    else updateStepper();
  }

  function updateStepper() {
    const last = events.length;
    const v = selected ?? last;
    back.disabled = v <= 1;
    forward.disabled = v >= last;
    latest.disabled = selected === null;
    for (const row of timelineBody.children) {
      if (Number(row.dataset.version) === v) row.setAttribute('aria-current', 'true');
      else row.removeAttribute('aria-current');
    }
  }

  let stateRequest = 0;
  function stateHeading(v) {
    const e = events[v - 1];
    return `State after version ${v} of ${events.length}` +
      (selected === null ? ' (latest)' : '') + (e ? `: ${e.event.type} at ${clock(e.recorded_at)}` : '');
  }

  /** Shows the job after `version` (null: the latest, and keep following it). */
  async function showState(version) {
    selected = version === null || version >= events.length ? null : version;
    const v = selected ?? events.length;
    updateStepper();
    if (!v) return;
    // The heading says at once which version is coming; the facts stay dimmed until it has.
    stateTitle.textContent = stateHeading(v);
    stateBody.setAttribute('aria-busy', 'true');
    const ticket = ++stateRequest;
    try {
      const state = await get(`${base}/state?version=${v}`, { signal });
      if (ticket !== stateRequest) return;
      const e = events[v - 1];
      stateTitle.textContent = stateHeading(v);
      // A job still running at version v had run until that event, not until now.
      stateBody.replaceChildren(facts(state, e ? Date.parse(e.recorded_at) : Date.now()));
      stateBody.setAttribute('aria-busy', 'false');
    } catch (err) {
      if (err.name !== 'AbortError') message.show(err.detail ?? String(err));
    }
  }
  const latestState = throttle(() => {
    if (selected === null && !signal.aborted) showState(null);
  }, 500);
  back.addEventListener('click', () => showState((selected ?? events.length) - 1));
  forward.addEventListener('click', () => showState((selected ?? events.length) + 1));
  latest.addEventListener('click', () => showState(null));

  /** Shows a job as an answer gave it; a final state is never replaced by an earlier one. */
  function show(fresh) {
    if (job && FINAL.has(job.status) && !FINAL.has(fresh.status)) return;
    job = fresh;
    renderNow();
  }

  // Answers can cross: only the newest request's answer is shown, and while a cancel is in
  // flight no re-read starts, so its answer (`cancelling`) is shown before what follows.
  let jobTicket = 0;
  let cancelRequest = null;
  const reread = throttle(async () => {
    if (cancelRequest) await cancelRequest.catch(() => {});
    if (signal.aborted) return;
    const ticket = ++jobTicket;
    try {
      const fresh = await get(base, { signal });
      if (ticket === jobTicket) show(fresh);
    } catch (err) {
      if (err.name !== 'AbortError') message.show(err.detail ?? String(err));
    }
  }, 500);

  cancel.addEventListener('click', async () => {
    if (cancelRequest) return;
    message.clear();
    cancelRequest = post(`${base}/cancel`, { signal });
    try {
      const answer = await cancelRequest;
      ++jobTicket; // re-reads sent before this answer are older than it
      show(answer);
    } catch (err) {
      if (err.name === 'AbortError') return;
      // The API's own words: "Cannot cancel job in completed state", ...
      message.show(err instanceof ApiError ? err.detail : String(err));
    } finally {
      cancelRequest = null;
    }
  });

  (async () => {
    try {
      const [j, history] = await Promise.all([get(base, { signal }), get(`${base}/events`, { signal })]);
      job = j;
      renderNow();
      for (const e of history) addEvent(e);
      get(`/source-connections/${sc}`, { signal }).then((c) => { connection.textContent = c.name; }, () => {});
      if (!FINAL.has(job.status)) {
        await followJob(sc, jobId, events.length ? events[events.length - 1].version : 0, (e) => {
          addEvent(e);
          reread();
        }, signal);
        if (!signal.aborted) reread();
      }
    } catch (err) {
      if (err.name !== 'AbortError') message.show(err.detail ?? String(err));
    }
  })();

  every(1000, () => {
    if (!job || FINAL.has(job.status)) return;
    const d = now.querySelector('[data-field=duration]');
    if (d) d.textContent = seconds(jobDuration(job));
    renderCountdown();
  }, signal);
}
