// Drives the dashboard of a running syncjobs in Debian's chromium, as a user would:
// enter the key, run a sync, watch its counts move, cancel it, see `cancelling` then
// `cancelled`, read its timeline, step back to an earlier version; then a list of
// 1,000 jobs. Writes a 1280x800 screenshot of each page to SCREENSHOTS.
// Usage: node dashboard.mjs BASE_URL API_KEY SCREENSHOTS DATA_DIR  (tests/ui/run starts the
// server on DATA_DIR with a 6 s cancel timeout)
// Exits non-zero on the first broken promise, a page error, or a request that leaves the host.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { spawn } from 'node:child_process';

const [base, key, shots, dataDir] = process.argv.slice(2);
const manyJobs = Number(process.env.SYNCJOBS_UI_TEST_JOBS ?? 1000);
mkdirSync(shots, { recursive: true });
const origin = new URL(base).origin;
const step = (what) => console.log(`ui: ${what}`);

async function api(method, path, body) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { 'x-api-key': key, 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  const json = await res.json();
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

// What the page works with: a slow sync to watch and cancel, and one that has completed.
const suffix = String(Date.now()).slice(-6);
await api('POST', '/collections', { name: 'Finance Data', readable_id: `finance-${suffix}` });
const slow = await api('POST', '/source-connections', {
  short_name: 'timed', readable_collection_id: `finance-${suffix}`, name: 'Ledger (slow)',
  config: { entity_count: 2000, duration_seconds: 120 },
  authentication: { credentials: { timed_key: 'any' } }, sync_immediately: false,
});
const quick = await api('POST', '/source-connections', {
  short_name: 'timed', readable_collection_id: `finance-${suffix}`, name: 'Invoices (quick)',
  config: { entity_count: 50, duration_seconds: 0.5 },
  authentication: { credentials: { timed_key: 'any' } }, sync_immediately: true,
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const failures = [];
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
try {
  page.setDefaultTimeout(30000);
  page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
  // Working offline: any request for another host is a failure (and is not made).
  await page.route('**/*', (route) => {
    const url = route.request().url();
    if (new URL(url).origin !== origin) {
      failures.push(`request left the host: ${url}`);
      return route.abort();
    }
    return route.continue();
  });
  const shot = async (name) => page.screenshot({ path: `${shots}/${name}.png` });
  const statusOf = (scope) => scope.locator('.status').first().textContent();

  step('the key, by keyboard: a wrong one is refused with the API\'s words');
  await page.goto(`${base}/ui`);
  await page.getByLabel('API key', { exact: true }).fill('sjk_not-a-key-0123456789');
  await page.keyboard.press('Enter');
  await page.getByRole('alert').filter({ hasText: 'Invalid or expired API key' }).waitFor();
  await shot('01-key');
  await page.getByLabel('API key', { exact: true }).fill(key);
  await page.keyboard.press('Enter');

  step('collections and source connections, with status and entity counts');
  const slowRow = page.locator(`tr[data-connection="${slow.id}"]`);
  const quickRow = page.locator(`tr[data-connection="${quick.id}"]`);
  await page.getByRole('heading', { name: 'Collections & source connections' }).waitFor();
  await page.getByRole('cell', { name: `finance-${suffix}` }).first().waitFor();
  // The quick one ran to the end: its 50 entities (and the container) are counted.
  await page.waitForFunction((id) => {
    const row = document.querySelector(`tr[data-connection="${id}"]`);
    return row && row.querySelectorAll('.status')[0]?.textContent === 'active'
      && Number(row.children[4].textContent.replace(/\D/g, '')) >= 50;
  }, quick.id, { timeout: 60000 });
  assert.equal(await statusOf(slowRow), 'pending_sync');
  await shot('02-collections');

  step('Run, by keyboard; its job page');
  await slowRow.getByRole('button', { name: 'Run Ledger (slow)' }).focus();
  await page.keyboard.press('Enter');
  const started = slowRow.getByRole('link', { name: /^job / });
  await started.waitFor();
  step('Run again while it runs: the API\'s refusal, on screen');
  await slowRow.getByRole('button', { name: 'Run Ledger (slow)' }).click();
  await page.getByRole('alert').filter({ hasText: /Cannot start new sync: a sync job is already (pending|running)/ }).waitFor();
  await started.click();
  await page.locator('#job-now').getByText('running').waitFor();

  step('counts move while it runs, without a reload (job page: facts and chart)');
  const inserted = async () => Number((await page.locator('#job-now [data-fact=inserted]').textContent()).replace(/\D/g, ''));
  await page.waitForFunction(() => Number(document.querySelector('#job-now [data-fact=inserted]')?.textContent.replace(/\D/g, '')) > 0);
  const first = await inserted();
  await page.waitForFunction((n) => Number(document.querySelector('#job-now [data-fact=inserted]').textContent.replace(/\D/g, '')) > n, first);
  assert.ok(await page.locator('#job-chart path[data-series=inserted]').count() === 1, 'no chart line');
  await page.waitForTimeout(1500); // a few more points on the chart for the screenshot
  await shot('03-job-running');

  step('the jobs list: live, filterable by status');
  await page.getByRole('link', { name: 'Jobs', exact: true }).click();
  await page.getByLabel('Status', { exact: true }).selectOption('running');
  const listRows = page.locator('tbody tr[data-job]');
  await listRows.first().waitFor();
  assert.equal(await listRows.count(), 1, 'one running job');
  const runningRow = listRows.first();
  const job = await runningRow.getAttribute('data-job');
  const cellCount = async () => Number((await runningRow.locator('td').nth(5).textContent()).replace(/\D/g, ''));
  const inList = await cellCount();
  await page.waitForFunction(([id, n]) => {
    const row = document.querySelector(`tr[data-job="${id}"]`);
    return row && Number(row.children[5].textContent.replace(/\D/g, '')) > n;
  }, [job, inList]);
  await page.getByLabel('Status', { exact: true }).selectOption('');
  await listRows.nth(1).waitFor();
  await shot('04-jobs-live');

  step('a final job\'s Cancel says why it cannot');
  const done = page.locator('tbody tr[data-job]').filter({ has: page.locator('.status-completed') }).first();
  await done.getByRole('button', { name: /^Cancel job/ }).click();
  await page.getByRole('alert').filter({ hasText: 'Cannot cancel job in completed state' }).waitFor();

  step('cancel the running job on its page: cancelling, then cancelled');
  await page.locator(`tr[data-job="${job}"] a`).click();
  await page.locator('#job-now').getByText('running').waitFor();
  // Every status the page shows, in order (the transient `cancelling` included).
  await page.evaluate(() => {
    window.seen = [];
    const now = document.getElementById('job-now');
    const record = () => {
      const s = now.querySelector('.status')?.textContent;
      if (s && window.seen[window.seen.length - 1] !== s) window.seen.push(s);
    };
    record();
    new MutationObserver(record).observe(now, { childList: true, subtree: true, characterData: true });
  });
  await page.getByRole('button', { name: 'Cancel job' }).focus();
  await page.keyboard.press('Enter');
  await page.locator('#job-now').getByText('cancelled').waitFor();
  const seen = await page.evaluate(() => window.seen);
  step(`statuses seen: ${seen.join(' -> ')}`);
  assert.deepEqual(seen.slice(-2), ['cancelling', 'cancelled'], `statuses seen: ${seen}`);
  const finalCount = await inserted();

  step('the timeline: who, when, what');
  const timeline = page.locator('.timeline tbody tr');
  await page.locator('.timeline').getByRole('cell', { name: 'Cancelled', exact: true }).waitFor();
  const types = await timeline.locator('td:nth-child(4)').allTextContents();
  assert.equal(types[0], 'JobCreated');
  assert.equal(types[1], 'JobStarted');
  assert.ok(types.includes('ProgressRecorded'), types.join());
  assert.deepEqual(types.slice(-2), ['CancelRequested', 'Cancelled']);
  const request = timeline.filter({ hasText: 'CancelRequested' });
  assert.match(await request.locator('td').nth(2).textContent(), /api-key/);
  assert.match(await request.locator('td').nth(4).textContent(), /watchdog after 6 s/);
  await page.getByRole('button', { name: 'Cancel job' }).click();
  await page.getByRole('alert').filter({ hasText: 'Cannot cancel job in cancelled state' }).waitFor();
  const stateTitle = page.locator('#state-title');
  await stateTitle.filter({ hasText: `version ${types.length} of ${types.length} (latest): Cancelled` }).waitFor();
  await page.locator('#job-state[aria-busy=false]').getByText('cancelled').waitFor();
  await shot('05-job-cancelled');

  step('step back: the state after earlier versions');
  await page.getByRole('button', { name: '◀ Step back' }).click();
  await stateTitle.filter({ hasText: `version ${types.length - 1} of ${types.length}: CancelRequested` }).waitFor();
  await page.locator('#job-state[aria-busy=false]').getByText('cancelling').waitFor();
  await page.getByRole('button', { name: '◀ Step back' }).click();
  await stateTitle.filter({ hasText: 'ProgressRecorded' }).waitFor();
  await page.locator('#job-state[aria-busy=false]').getByText('running').waitFor();
  // Further back: a version in the middle of the run has fewer entities than the end.
  const middle = Math.max(3, Math.floor(types.length / 2));
  await page.getByRole('button', { name: `State after version ${middle}`, exact: true }).click();
  await stateTitle.filter({ hasText: `State after version ${middle} of` }).waitFor();
  await page.locator('#job-state[aria-busy=false]').waitFor();
  const then = Number((await page.locator('#job-state [data-fact=inserted]').textContent()).replace(/\D/g, ''));
  assert.ok(then < finalCount, `version ${middle} shows ${then}, the end ${finalCount}`);
  await page.locator('.timeline tr[aria-current=true]').scrollIntoViewIfNeeded();
  await shot('06-job-step-back');

  step('a stuck destination: the watchdog\'s deadline counts down, then the job ends');
  const again = await api('POST', `/source-connections/${slow.id}/run`);
  await page.goto(`${base}/ui#/jobs/${slow.id}/${again.id}`);
  await page.waitForFunction(() => Number(document.querySelector('#job-now [data-fact=inserted]')?.textContent.replace(/\D/g, '')) > 0);
  // Another process holds the destination's database: the worker's writes wait, so its
  // pipeline cannot stop and confirm the cancel.
  const holder = spawn('python3', ['-c', [
    'import sqlite3, sys, time',
    `c = sqlite3.connect(${JSON.stringify(`${dataDir}/entities.db`)}, isolation_level=None, timeout=30)`,
    'c.execute("BEGIN EXCLUSIVE")', 'print("locked", flush=True)', 'time.sleep(60)',
  ].join('\n')], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise((resolve, reject) => {
      holder.stdout.once('data', resolve);
      holder.once('exit', (code) => reject(new Error(`lock holder exited with ${code}`)));
    });
    await page.getByRole('button', { name: 'Cancel job' }).click();
    await page.locator('#job-now').getByText('cancelling').waitFor();
    const watchdog = page.locator('#watchdog');
    await watchdog.filter({ hasText: 'Watchdog forces "cancelled" in' }).waitFor();
    const left = async () => Number((await watchdog.textContent()).match(/in ([\d.]+) s/)[1]);
    const before = await left();
    assert.ok(before <= 6, `deadline ${before} s away, the timeout is 6 s`);
    await page.waitForTimeout(1200);
    const after = await left();
    assert.ok(after < before, `the countdown did not move: ${before} -> ${after}`);
    await page.locator('.timeline').getByRole('cell', { name: 'CancelRequested', exact: true }).waitFor();
    await shot('07-job-watchdog');
    await page.locator('#job-now').getByText('cancelled').waitFor({ timeout: 60000 });
    assert.ok(await watchdog.isHidden(), 'the countdown stays after the end');
    const last = (await page.locator('.timeline tbody tr td:nth-child(4)').allTextContents()).pop();
    step(`the job ended with ${last}`);
    assert.ok(['ForceCancelled', 'Cancelled'].includes(last), last);
    await shot('08-job-ended');
  } finally {
    holder.kill();
  }

  if (manyJobs > 0) {
    step(`a list of ${manyJobs} more jobs`);
    const made = Date.now();
    const names = Array.from({ length: manyJobs }, (_, i) => i);
    const workers = Array.from({ length: 4 }, async () => {
      while (names.length) {
        const i = names.pop();
        await api('POST', '/source-connections', {
          short_name: 'timed', readable_collection_id: `finance-${suffix}`, name: `Bulk ${String(i).padStart(4, '0')}`,
          config: { entity_count: 1, duration_seconds: 0.1 },
          authentication: { credentials: { timed_key: 'any' } }, sync_immediately: true,
        });
      }
    });
    await Promise.all(workers);
    step(`made in ${((Date.now() - made) / 1000).toFixed(1)} s`);
    const total = manyJobs + 3; // and the slow one's two and the quick one's
    const opened = Date.now();
    await page.goto(`${base}/ui#/jobs`);
    await page.locator('#jobs-summary').filter({ hasText: `${total} jobs` }).waitFor({ timeout: 120000 });
    step(`the list of ${total} jobs shown in ${((Date.now() - opened) / 1000).toFixed(1)} s`);
    assert.equal(await page.locator('tbody tr[data-job]').count(), 50, 'one page of rows in the DOM');
    await page.getByRole('button', { name: 'Next' }).click();
    await page.getByText(`Page 2 of ${Math.ceil(total / 50)}`).waitFor();
    await page.getByLabel('Status', { exact: true }).selectOption('cancelled');
    assert.equal(await page.locator('tbody tr[data-job]').count(), 2, 'the two cancelled runs');
    await page.getByLabel('Status', { exact: true }).selectOption('');
    await shot('09-jobs-many');
    await page.goto(`${base}/ui#/`);
    await page.locator('tr[data-connection]').nth(24).waitFor();
    await shot('10-collections-many');
  }
} catch (e) {
  await page.screenshot({ path: `${shots}/failure.png` }).catch(() => {});
  throw e;
} finally {
  await browser.close();
}
assert.deepEqual(failures, []);
step(`passed; screenshots in ${shots}`);
