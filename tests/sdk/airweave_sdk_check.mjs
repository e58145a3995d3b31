// Drives a running syncjobs with Airweave's official TypeScript SDK (@airweave/sdk), unchanged.
// Usage: node airweave_sdk_check.mjs BASE_URL API_KEY  (run from a folder where the SDK is installed)
// Same walk as the Python check: collection -> timed source connection -> run -> running ->
// cancel -> cancelled, plus the contract's errors. Exits non-zero on the first broken promise.
import { AirweaveSDKClient, AirweaveSDKError } from "@airweave/sdk";
import assert from "node:assert/strict";

const [baseUrl, apiKey] = process.argv.slice(2);
const client = new AirweaveSDKClient({ baseUrl, apiKey });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, probe, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value) return value;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function expectError(status, detail, call) {
  try {
    await call();
  } catch (e) {
    assert.ok(e instanceof AirweaveSDKError, String(e));
    assert.equal(e.statusCode, status, JSON.stringify(e.body));
    assert.equal(e.body?.detail, detail);
    return;
  }
  throw new Error(`expected ${status} ${detail}, the call succeeded`);
}

const suffix = String(Date.now()).slice(-8);
const collection = await client.collections.create({ name: `TS SDK check ${suffix}` });
assert.match(collection.readable_id, /^ts-sdk-check/);
assert.equal((await client.collections.get(collection.readable_id)).id, collection.id);

const sc = await client.sourceConnections.create({
  short_name: "timed",
  readable_collection_id: collection.readable_id,
  name: "Timed source",
  config: { entity_count: 400, duration_seconds: 20 },
  authentication: { credentials: { timed_key: "any" } },
  sync_immediately: false,
});
const listed = await client.sourceConnections.list({ collection: collection.readable_id });
assert.deepEqual(listed.map((i) => i.id), [sc.id]);

const job = await client.sourceConnections.run(sc.id);
assert.equal(job.status, "pending");
const jobOf = async () =>
  (await client.sourceConnections.getSourceConnectionJobs(sc.id)).find((j) => j.id === job.id);
const seen = await waitFor("the job to run and insert entities", async () => {
  const j = await jobOf();
  return j.status === "running" && (j.entities_inserted ?? 0) > 0 ? j : null;
});
try {
  await client.sourceConnections.run(sc.id);
  throw new Error("a second run while one is running must be refused");
} catch (e) {
  assert.equal(e.statusCode, 400);
  assert.match(e.body.detail, /^Cannot start new sync: a sync job is already /);
}

const cancelling = await client.sourceConnections.cancelJob(sc.id, job.id);
assert.ok(["cancelling", "cancelled"].includes(cancelling.status), cancelling.status);
const done = await waitFor("the job to be cancelled", async () => {
  const j = await jobOf();
  return j.status === "cancelled" ? j : null;
});
assert.ok(done.completed_at && done.started_at);
assert.ok(done.entities_inserted >= seen.entities_inserted, "counts never go down");
const conn = await client.sourceConnections.get(sc.id);
assert.equal(conn.entities.total_entities, done.entities_inserted);

await expectError(400, "Cannot cancel job in cancelled state", () =>
  client.sourceConnections.cancelJob(sc.id, job.id));
await expectError(404, "Source connection not found", () =>
  client.sourceConnections.get("00000000-0000-4000-8000-000000000000"));
await expectError(404, "Collection not found", () => client.collections.get("no-such-collection"));
const stranger = new AirweaveSDKClient({ baseUrl, apiKey: "not-a-key-of-anyone" });
await expectError(403, "Invalid or expired API key", () => stranger.collections.list());

await client.sourceConnections.delete(sc.id);
await expectError(404, "Source connection not found", () => client.sourceConnections.get(sc.id));
await client.collections.delete(collection.readable_id);
console.log("airweave-ts-sdk: 1 passed, 0 failed");
