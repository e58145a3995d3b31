// A job's counts over time as a hand-drawn SVG line chart: one point per event that carries
// counts (progress reports and the final event), x = seconds since the job started.

const NS = 'http://www.w3.org/2000/svg';
const SERIES = [
  ['inserted', '#1f5fa8'],
  ['kept', '#57ab5a'],
  ['updated', '#8250df'],
  ['deleted', '#cf222e'],
  ['failed', '#e36209'],
];
const W = 560;
const H = 220;
const PAD = { left: 56, right: 16, top: 12, bottom: 32 };

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Points [{t: seconds, inserted, kept, updated, deleted, failed}] from a job's events. */
export function points(events) {
  const start = events.find((e) => e.event.type === 'JobStarted') ?? events[0];
  if (!start) return [];
  const t0 = Date.parse(start.recorded_at);
  const out = [{ t: 0, inserted: 0, kept: 0, updated: 0, deleted: 0, failed: 0 }];
  for (const e of events) {
    const counts = e.event.data?.counts;
    if (!counts) continue;
    out.push({ t: Math.max(0, (Date.parse(e.recorded_at) - t0) / 1000), ...counts });
  }
  return out;
}

/** A round step (1, 2 or 5 times a power of ten) of at least `x`. */
function niceStep(x) {
  if (x <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

/** An <svg> of the points (role img, with a text summary for screen readers). */
export function chart(pts) {
  const last = pts[pts.length - 1] ?? { t: 0 };
  const tMax = Math.max(1, last.t);
  // Four grid lines at round values.
  const yMax = 4 * niceStep(Math.max(1, ...pts.flatMap((p) => SERIES.map(([k]) => p[k] ?? 0))) / 4);
  const x = (t) => PAD.left + (t / tMax) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / yMax) * (H - PAD.top - PAD.bottom);
  const summary = `Counts over ${tMax.toFixed(1)} s: ` +
    SERIES.map(([k]) => `${k} ${last[k] ?? 0}`).join(', ');
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': summary });
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    root.append(
      svg('line', { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: 'grid' }),
      svg('text', { x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, Math.round(v).toLocaleString()),
    );
  }
  for (let i = 0; i <= 4; i++) {
    const t = (tMax * i) / 4;
    root.append(svg('text', { x: x(t), y: H - PAD.bottom + 16, 'text-anchor': 'middle' }, `${t.toFixed(1)} s`));
  }
  root.append(
    svg('line', { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom, class: 'axis' }),
    svg('line', { x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom, class: 'axis' }),
  );
  for (const [key, color] of SERIES) {
    if (!pts.some((p) => (p[key] ?? 0) > 0) && key !== 'inserted') continue;
    const d = pts.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p[key] ?? 0).toFixed(1)}`).join(' ');
    root.append(svg('path', { d, fill: 'none', stroke: color, 'stroke-width': 2, 'data-series': key }));
  }
  return root;
}
