// Collections and their source connections: status, entity counts, last job, and a Run
// button. A connection's detail (entity counts, last job) is one request each, so only the
// page on screen is fetched; a connection that is syncing is refreshed every 5 s.

import { ApiError, get, getAll, post } from './api.js';
import { el, every, notice, number, pool, shortId, statusBadge, time } from './dom.js';

const PAGE = 25;

export function mount(root, params, signal) {
  const message = notice('alert');
  const collectionsBody = el('tbody');
  const connectionsBody = el('tbody');
  const pager = el('div', { class: 'pager' });
  const filter = el('select', { id: 'collection-filter' }, el('option', { value: '' }, 'All collections'));
  root.append(
    el('h1', {}, 'Collections & source connections'),
    message.node,
    el('section', { class: 'card', 'aria-labelledby': 'collections-title' },
      el('h2', { id: 'collections-title' }, 'Collections'),
      el('table', {},
        el('thead', {}, el('tr', {},
          el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'Readable id'),
          el('th', { scope: 'col' }, 'Status'), el('th', { scope: 'col', class: 'num' }, 'Source connections'),
          el('th', { scope: 'col' }, 'Created'))),
        collectionsBody)),
    el('section', { class: 'card', 'aria-labelledby': 'connections-title' },
      el('h2', { id: 'connections-title' }, 'Source connections'),
      el('div', { class: 'toolbar' }, el('label', { for: 'collection-filter' }, 'Collection'), filter),
      el('table', {},
        el('thead', {}, el('tr', {},
          el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'Collection'),
          el('th', { scope: 'col' }, 'Source'), el('th', { scope: 'col' }, 'Status'),
          el('th', { scope: 'col', class: 'num' }, 'Entities'), el('th', { scope: 'col', class: 'num' }, 'Runs (ok / failed)'),
          el('th', { scope: 'col' }, 'Last job'), el('th', { scope: 'col' }, el('span', { class: 'muted' }, 'Actions')))),
        connectionsBody),
      pager),
  );

  let connections = [];
  let page = 0;
  const details = new Map(); // id -> SourceConnection (with entities and sync)
  const runs = new Map(); // id -> the job its Run button started here
  const busy = new Set(); // ids whose Run is in flight

  function visible() {
    const c = filter.value;
    return c ? connections.filter((x) => x.readable_collection_id === c) : connections;
  }

  function connectionRow(item) {
    const d = details.get(item.id);
    const status = d?.status ?? item.status;
    const last = d?.sync?.last_job;
    const started = runs.get(item.id);
    const runMessage = el('span', { class: 'row-message', role: 'status' }, started
      ? ['Started ', el('a', { href: `#/jobs/${item.id}/${started}` }, `job ${shortId(started)}`)] : null);
    const run = el('button', { type: 'button', class: 'primary', 'aria-label': `Run ${item.name}` }, 'Run');
    run.addEventListener('click', async () => {
      // Not `disabled`: a disabled button loses the keyboard focus.
      if (busy.has(item.id)) return;
      busy.add(item.id);
      message.clear();
      try {
        const job = await post(`/source-connections/${item.id}/run`, { signal });
        runs.set(item.id, job.id);
        replaceRow(item.id);
        await refresh([item.id]);
      } catch (e) {
        if (e.name === 'AbortError') return;
        message.show(`Run ${item.name}: ${e instanceof ApiError ? e.detail : e}`);
      } finally {
        busy.delete(item.id);
      }
    });
    return el('tr', { 'data-connection': item.id },
      el('td', {}, item.name, el('div', { class: 'muted mono' }, shortId(item.id))),
      el('td', {}, item.readable_collection_id),
      el('td', {}, item.short_name),
      el('td', {}, statusBadge(status)),
      el('td', { class: 'num' }, d ? number(d.entities?.total_entities) : '…'),
      el('td', { class: 'num' }, d ? `${d.sync.total_runs} (${d.sync.successful_runs} / ${d.sync.failed_runs})` : '…'),
      el('td', {}, last
        ? [el('a', { href: `#/jobs/${item.id}/${last.id}` }, shortId(last.id)), ' ', statusBadge(last.status)]
        : el('span', { class: 'muted' }, 'none')),
      el('td', {}, run, ' ', runMessage),
    );
  }

  function renderConnections() {
    const rows = visible();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    page = Math.min(page, pages - 1);
    const shown = rows.slice(page * PAGE, (page + 1) * PAGE);
    connectionsBody.replaceChildren(
      ...(shown.length ? shown.map(connectionRow)
        : [el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No source connections.'))]),
    );
    const prev = el('button', { type: 'button', disabled: page === 0 }, 'Previous');
    const next = el('button', { type: 'button', disabled: page >= pages - 1 }, 'Next');
    prev.addEventListener('click', () => { page -= 1; renderConnections(); loadDetails(); });
    next.addEventListener('click', () => { page += 1; renderConnections(); loadDetails(); });
    pager.replaceChildren(prev, el('span', {}, `Page ${page + 1} of ${pages} (${rows.length} connections)`), next);
    return shown;
  }

  function replaceRow(id) {
    const old = connectionsBody.querySelector(`tr[data-connection="${id}"]`);
    const item = connections.find((c) => c.id === id);
    if (!old || !item) return;
    // Keep focus on the Run button of a row that is redrawn under it.
    const hadFocus = old.contains(document.activeElement);
    const row = connectionRow(item);
    old.replaceWith(row);
    if (hadFocus) row.querySelector('button').focus();
  }

  async function refresh(ids) {
    await pool(ids, 4, async (id) => {
      try {
        details.set(id, await get(`/source-connections/${id}`, { signal }));
        replaceRow(id);
      } catch (e) {
        if (e.name !== 'AbortError' && e.status !== 404) message.show(e.detail ?? String(e));
      }
    });
  }

  function loadDetails() {
    const shown = visible().slice(page * PAGE, (page + 1) * PAGE);
    return refresh(shown.map((c) => c.id));
  }

  filter.addEventListener('change', () => { page = 0; renderConnections(); loadDetails(); });

  (async () => {
    try {
      const [collections, list] = await Promise.all([
        getAll('/collections', { signal }),
        getAll('/source-connections', { signal }),
      ]);
      connections = list;
      const perCollection = new Map();
      for (const c of list) perCollection.set(c.readable_collection_id, (perCollection.get(c.readable_collection_id) ?? 0) + 1);
      collectionsBody.replaceChildren(
        ...(collections.length ? collections.map((c) => el('tr', {},
          el('td', {}, c.name),
          el('td', { class: 'mono' }, c.readable_id),
          el('td', {}, statusBadge(c.status)),
          el('td', { class: 'num' }, number(perCollection.get(c.readable_id))),
          el('td', {}, time(c.created_at)),
        )) : [el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'No collections yet.'))]),
      );
      for (const c of collections) filter.append(el('option', { value: c.readable_id }, c.name));
      renderConnections();
      await loadDetails();
    } catch (e) {
      if (e.name !== 'AbortError') message.show(e.detail ?? String(e));
    }
  })();

  // Live enough for a list of connections: a syncing one is re-read every 5 s (a job's own
  // page and the jobs list follow jobs over server-sent events).
  every(5000, () => {
    const syncing = visible().slice(page * PAGE, (page + 1) * PAGE)
      .filter((c) => (details.get(c.id)?.status ?? c.status) === 'syncing');
    if (syncing.length) refresh(syncing.map((c) => c.id));
  }, signal);
}
