// Every job of the organization, newest first, filterable by status, 50 to a page.
//
// Live: each unfinished job on screen follows its own event stream (server-sent events) and
// is re-read (the server's fold, not one of ours) when an event arrives, at most every
// 0.5 s. Browsers hold about six connections per host, so at most MAX_STREAMS streams are
// open; every 5 s the connection list is read once and the jobs of connections that are
// syncing (or changed) are re-read, which finds new jobs and moves the ones without a stream.
// Durations tick locally. Only the rows of one page are in the DOM, and an update touches its
// own row, so a list of thousands costs what a page costs.

import { ApiError, followJob, get, getAll, post } from './api.js';
import {
  FINAL, STATUSES, el, every, jobDuration, notice, number, pool, seconds, shortId, statusBadge, time,
} from './dom.js';

const PAGE = 50;
const MAX_STREAMS = 3;

export function mount(root, params, signal) {
  const message = notice('alert');
  const status = el('select', { id: 'status-filter' },
    el('option', { value: '' }, 'All statuses'),
    ...STATUSES.map((s) => el('option', { value: s }, s)));
  status.value = params.status ?? '';
  const summary = el('p', { class: 'muted', id: 'jobs-summary', 'aria-live': 'polite' }, 'Loading…');
  const body = el('tbody');
  const pager = el('div', { class: 'pager' });
  root.append(
    el('h1', {}, 'Jobs'),
    message.node,
    el('div', { class: 'toolbar' },
      el('label', { for: 'status-filter' }, 'Status'), status, summary),
    el('table', { 'aria-describedby': 'jobs-summary' },
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, 'Job'), el('th', { scope: 'col' }, 'Source connection'),
        el('th', { scope: 'col' }, 'Status'), el('th', { scope: 'col' }, 'Started'),
        el('th', { scope: 'col', class: 'num' }, 'Duration'),
        el('th', { scope: 'col', class: 'num' }, 'Inserted'), el('th', { scope: 'col', class: 'num' }, 'Updated'),
        el('th', { scope: 'col', class: 'num' }, 'Deleted'), el('th', { scope: 'col', class: 'num' }, 'Failed'),
        el('th', { scope: 'col' }, el('span', { class: 'muted' }, 'Actions')))),
      body),
    pager,
  );

  const jobs = new Map(); // id -> job
  const names = new Map(); // source connection id -> name
  const connectionStatus = new Map();
  let order = []; // ids, newest first (see newestFirst)
  let page = Number(params.page ?? 0) || 0;
  const rows = new Map(); // id -> <tr> of the rows on screen
  const streams = new Map(); // id -> AbortController
  let redraw = 0;
  let unsorted = false;
  let loading = null; // {done, of} while the first load reads each connection's jobs

  /**
   * Newest first. A job's id says nothing of when it was made (a connection's jobs have ids
   * derived from the job before them), and the job object has no creation time: a job is
   * made and claimed within milliseconds, so the key is when it started, or ended without
   * starting (cancelled while pending); a pending job is the newest. Ties: by id.
   */
  function newestFirst(a, b) {
    const key = (id) => {
      const job = jobs.get(id);
      return Date.parse(job?.started_at ?? job?.completed_at ?? '') || Infinity;
    };
    const [ka, kb] = [key(a), key(b)];
    if (ka !== kb) return ka < kb ? 1 : -1;
    return a < b ? 1 : -1;
  }

  function matches(job) {
    return !status.value || job.status === status.value;
  }

  function cell(job) {
    const cancel = el('button', { type: 'button', class: 'danger', 'aria-label': `Cancel job ${shortId(job.id)}` }, 'Cancel');
    cancel.addEventListener('click', async () => {
      message.clear();
      try {
        update(await post(`/source-connections/${job.source_connection_id}/jobs/${job.id}/cancel`, { signal }));
      } catch (e) {
        if (e.name === 'AbortError') return;
        message.show(`Cancel job ${shortId(job.id)}: ${e instanceof ApiError ? e.detail : e}`);
      }
    });
    const row = el('tr', { 'data-job': job.id },
      el('td', {}, el('a', { href: `#/jobs/${job.source_connection_id}/${job.id}`, class: 'mono', title: job.id }, shortId(job.id))),
      el('td', {}, names.get(job.source_connection_id) ?? shortId(job.source_connection_id)),
      el('td', { 'data-field': 'status' }, statusBadge(job.status)),
      el('td', {}, time(job.started_at)),
      el('td', { class: 'num', 'data-field': 'duration' }, seconds(jobDuration(job))),
      el('td', { class: 'num' }, number(job.entities_inserted)),
      el('td', { class: 'num' }, number(job.entities_updated)),
      el('td', { class: 'num' }, number(job.entities_deleted)),
      el('td', { class: 'num' }, number(job.entities_failed)),
      el('td', {}, cancel),
    );
    return row;
  }

  function render() {
    redraw = 0;
    if (unsorted) {
      order.sort(newestFirst);
      unsorted = false;
    }
    const shown = order.filter((id) => matches(jobs.get(id)));
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(page, pages - 1);
    const ids = shown.slice(page * PAGE, (page + 1) * PAGE);
    const focused = document.activeElement?.closest?.('tr[data-job]')?.dataset.job;
    rows.clear();
    body.replaceChildren(
      ...(ids.length ? ids.map((id) => {
        const row = cell(jobs.get(id));
        rows.set(id, row);
        return row;
      }) : [el('tr', {}, el('td', { colspan: 10, class: 'muted' }, 'No jobs.'))]),
    );
    if (focused && rows.has(focused)) rows.get(focused).querySelector('button').focus();
    const counts = new Map();
    for (const job of jobs.values()) counts.set(job.status, (counts.get(job.status) ?? 0) + 1);
    summary.textContent = `${jobs.size} jobs: ` +
      (STATUSES.filter((s) => counts.get(s)).map((s) => `${counts.get(s)} ${s}`).join(', ') || 'none') +
      (loading ? ` (loading: ${loading.done} of ${loading.of} source connections read)` : '');
    const prev = el('button', { type: 'button', disabled: page === 0 }, 'Previous');
    const next = el('button', { type: 'button', disabled: page >= pages - 1 }, 'Next');
    prev.addEventListener('click', () => { page -= 1; render(); });
    next.addEventListener('click', () => { page += 1; render(); });
    pager.replaceChildren(prev, el('span', {}, `Page ${page + 1} of ${pages}`), next);
    follow();
  }

  /** Many updates in one frame cost one redraw. */
  function scheduleRender() {
    if (!redraw) redraw = requestAnimationFrame(render);
  }

  /** A job as the API now shows it: its row changes in place, or the page is redrawn. */
  function update(job) {
    const before = jobs.get(job.id);
    // Answers can cross; a final state is never replaced by an earlier one.
    if (before && FINAL.has(before.status) && !FINAL.has(job.status)) return;
    jobs.set(job.id, job);
    if (!before) {
      order.push(job.id);
      unsorted = true;
    }
    if (!before || before.status !== job.status) {
      // It may enter or leave the filter, and the summary changes: redraw the page.
      scheduleRender();
      return;
    }
    const row = rows.get(job.id);
    if (row) {
      row.querySelector('[data-field=duration]').textContent = seconds(jobDuration(job));
      const cells = row.querySelectorAll('td.num');
      cells[1].textContent = number(job.entities_inserted);
      cells[2].textContent = number(job.entities_updated);
      cells[3].textContent = number(job.entities_deleted);
      cells[4].textContent = number(job.entities_failed);
    }
  }

  /** Re-reads one job, at most one request in flight and one every 0.5 s per job. */
  const pending = new Map();
  function reread(job) {
    if (pending.has(job.id)) {
      pending.get(job.id).again = true;
      return;
    }
    const entry = { again: false };
    pending.set(job.id, entry);
    (async () => {
      do {
        entry.again = false;
        try {
          update(await get(`/source-connections/${job.source_connection_id}/jobs/${job.id}`, { signal }));
        } catch (e) {
          if (e.name === 'AbortError') break;
        }
        await new Promise((r) => setTimeout(r, 500));
      } while (entry.again && !signal.aborted);
      pending.delete(job.id);
    })();
  }

  /** Streams for the unfinished jobs on screen (up to MAX_STREAMS); others stop. */
  function follow() {
    const want = [...rows.keys()].filter((id) => !FINAL.has(jobs.get(id).status)).slice(0, MAX_STREAMS);
    for (const [id, ctl] of streams) {
      if (!want.includes(id)) {
        ctl.abort();
        streams.delete(id);
      }
    }
    for (const id of want) {
      if (streams.has(id) || streams.size >= MAX_STREAMS) continue;
      const ctl = new AbortController();
      signal.addEventListener('abort', () => ctl.abort());
      streams.set(id, ctl);
      const job = jobs.get(id);
      followJob(job.source_connection_id, id, 0, () => reread(job), ctl.signal).finally(() => {
        if (streams.get(id) === ctl) streams.delete(id);
        if (!signal.aborted) reread(job);
      });
    }
  }

  async function loadConnections(all) {
    const list = await getAll('/source-connections', { signal });
    for (const c of list) names.set(c.id, c.name);
    const changed = list.filter((c) => all || c.status === 'syncing' || connectionStatus.get(c.id) !== c.status);
    for (const c of list) connectionStatus.set(c.id, c.status);
    // A first load reads every job of every connection (one request each: the API lists
    // jobs per connection), showing them as they come; later ones only the newest.
    const limit = all ? 1000 : 10;
    if (all) loading = { done: 0, of: changed.length };
    await pool(changed, 4, async (c) => {
      try {
        for (const job of await get(`/source-connections/${c.id}/jobs?limit=${limit}`, { signal })) update(job);
      } catch (e) {
        if (e.name !== 'AbortError' && e.status !== 404) throw e;
      }
      if (all) {
        loading.done += 1;
        scheduleRender();
      }
    });
    if (all) loading = null;
  }

  status.addEventListener('change', () => {
    page = 0;
    history.replaceState(null, '', status.value ? `#/jobs?status=${status.value}` : '#/jobs');
    render();
  });

  (async () => {
    try {
      await loadConnections(true);
      render();
    } catch (e) {
      if (e.name !== 'AbortError') message.show(e.detail ?? String(e));
    }
  })();

  every(5000, () => loadConnections(false).catch((e) => {
    if (e.name !== 'AbortError') message.show(e.detail ?? String(e));
  }), signal);

  // Durations of running jobs tick on screen without asking the server.
  every(1000, () => {
    for (const [id, row] of rows) {
      const job = jobs.get(id);
      if (!FINAL.has(job.status) && job.started_at) {
        row.querySelector('[data-field=duration]').textContent = seconds(jobDuration(job));
      }
    }
  }, signal);
}
