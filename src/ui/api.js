// The API as the page uses it: the key from sessionStorage in `x-api-key` on every call,
// the API's own `detail` as the error text, and server-sent events read with fetch (a
// browser EventSource cannot send a header, and the key must not go into a URL).

const KEY = 'syncjobs.apiKey';

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const forgetKey = () => sessionStorage.removeItem(KEY);

/** An answer other than 2xx: `status` and the API's `detail`, shown to the user as is. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

/** Called with an ApiError when the key is refused (401/403): the app asks for a key again. */
let onAuthFailure = () => {};
export function whenKeyRefused(fn) {
  onAuthFailure = fn;
}

function headers(extra = {}) {
  return { 'x-api-key': getKey() ?? '', ...extra };
}

async function failure(res) {
  let detail = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (typeof body?.detail === 'string') detail = body.detail;
  } catch {
    // Not JSON: keep the status line.
  }
  const err = new ApiError(res.status, detail);
  if (res.status === 401 || res.status === 403) onAuthFailure(err);
  return err;
}

export async function api(method, path, { signal } = {}) {
  let res;
  try {
    res = await fetch(path, { method, headers: headers(), signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `The server cannot be reached (${e.message})`);
  }
  if (!res.ok) throw await failure(res);
  return res.json();
}

export const get = (path, opts) => api('GET', path, opts);
export const post = (path, opts) => api('POST', path, opts);

/** Every page of a list route (`skip`/`limit`), in order. */
export async function getAll(path, opts) {
  const limit = 1000;
  const all = [];
  for (let skip = 0; ; skip += limit) {
    const sep = path.includes('?') ? '&' : '?';
    const page = await get(`${path}${sep}skip=${skip}&limit=${limit}`, opts);
    all.push(...page);
    if (page.length < limit) return all;
  }
}

/**
 * Reads a server-sent event stream until it ends: `onMessage(data, id)` per message.
 * Resolves when the server ends the stream: `'ended'`, or `'empty'` for a 204 (nothing
 * more will come).
 */
export async function stream(path, onMessage, { signal, lastEventId } = {}) {
  const extra = { accept: 'text/event-stream' };
  if (lastEventId !== undefined && lastEventId !== null) extra['last-event-id'] = String(lastEventId);
  const res = await fetch(path, { headers: headers(extra), signal });
  if (res.status === 204) return 'empty';
  if (!res.ok) throw await failure(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return 'ended';
    buffer += value.replaceAll('\r\n', '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        else if (line.startsWith('id:')) id = line.slice(3).trim();
      }
      if (data.length) onMessage(data.join('\n'), id);
    }
  }
}

const FINAL_EVENTS = new Set(['JobCompleted', 'JobFailed', 'Cancelled', 'ForceCancelled']);

/**
 * Follows one job's own events (`.../events` as a stream) from after `version` until its
 * final event, resuming with Last-Event-ID after a dropped connection: `onEvent(event)`
 * gets each event exactly once, in order.
 */
export async function followJob(sc, jobId, version, onEvent, signal) {
  let last = version;
  const path = `/source-connections/${sc}/jobs/${jobId}/events`;
  while (!signal.aborted) {
    let ended = false;
    try {
      const how = await stream(
        path,
        (data) => {
          const event = JSON.parse(data);
          if (event.version <= last) return;
          last = event.version;
          if (FINAL_EVENTS.has(event.event.type)) ended = true;
          onEvent(event);
        },
        { signal, lastEventId: last },
      );
      // The stream ends after the final event, or at once (204) when there is none to come;
      // one that ends otherwise (the server stopping) is resumed below.
      if (ended || how === 'empty') return;
    } catch (e) {
      if (signal.aborted || e instanceof ApiError) return;
    }
    // A dropped connection (server restart, network): resume after a pause.
    await new Promise((resolve) => setTimeout(resolve, 3000));
  }
}
