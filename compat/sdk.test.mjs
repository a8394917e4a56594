// The official @trigger.dev/sdk 4.8.3 against a real trigger.rs server process.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { configure, tasks, runs, batch, wait, idempotencyKeys, AuthenticationError, NotFoundError } from "@trigger.dev/sdk";
import { startServer, call, registerWorker, finishRun } from "./server.mjs";

let server;
let worker;

before(async () => {
  server = await startServer();
  configure({ baseURL: server.apiUrl, secretKey: server.secretKey });
  worker = await registerWorker(server, [
    { id: "hello", filePath: "src/hello.ts", exportName: "hello", retry: { maxAttempts: 3, factor: 2, minTimeoutInMs: 1000, maxTimeoutInMs: 10000, randomize: true }, maxDuration: 60 },
    { id: "once", filePath: "src/once.ts", exportName: "once" },
  ]);
});

after(async () => {
  await server?.stop();
});

test("tasks.trigger with every option stores them on the run", async () => {
  const at = new Date(Date.UTC(2030, 0, 1));
  const handle = await tasks.trigger(
    "hello",
    { userId: "123", at },
    { tags: ["a", "b"], ttl: "10m", machine: "small-2x", priority: 5, metadata: { source: "api" }, maxAttempts: 2, maxDuration: 30, concurrencyKey: "c1", delay: "1h" },
  );
  assert.match(handle.id, /^run_/);
  const run = await runs.retrieve(handle.id);
  assert.equal(run.status, "DELAYED");
  assert.equal(run.taskIdentifier, "hello");
  assert.deepEqual(run.tags, ["a", "b"]);
  assert.deepEqual(run.metadata, { source: "api" });
  assert.equal(run.payload.userId, "123");
  assert.equal(new Date(run.payload.at).toISOString(), at.toISOString(), "the SuperJSON date survives");
  assert.ok(run.delayedUntil instanceof Date && run.delayedUntil > new Date());
  assert.equal(run.isQueued, true);
  assert.equal(run.isCompleted, false);
});

test("runs.reschedule, cancel, replay and list", async () => {
  const delayed = await tasks.trigger("hello", { n: 1 }, { delay: "1h" });
  const moved = await runs.reschedule(delayed.id, { delay: "2h" });
  assert.equal(moved.status, "DELAYED");
  assert.ok(moved.delayedUntil.getTime() > Date.now() + 90 * 60 * 1000);

  const canceled = await runs.cancel(delayed.id);
  assert.equal(canceled.id, delayed.id);
  assert.equal((await runs.retrieve(delayed.id)).status, "CANCELED");

  const replayed = await runs.replay(delayed.id);
  assert.notEqual(replayed.id, delayed.id);
  const replay = await runs.retrieve(replayed.id);
  assert.deepEqual(replay.payload, { n: 1 });

  const page = await runs.list({ status: ["CANCELED"], taskIdentifier: "hello", limit: 10 });
  assert.ok(page.data.some((r) => r.id === delayed.id));
  assert.ok(page.data.every((r) => r.status === "CANCELED"));
});

test("tasks.batchTrigger and batch.retrieve", async () => {
  const result = await tasks.batchTrigger("hello", [{ payload: { i: 0 } }, { payload: { i: 1 }, options: { tags: ["batched"] } }]);
  assert.match(result.batchId, /^batch_/);
  assert.equal(result.runCount, 2);
  const retrieved = await batch.retrieve(result.batchId);
  assert.equal(retrieved.runs.length, 2);
  assert.equal(retrieved.runCount, 2);
  const second = await runs.retrieve(retrieved.runs[1]);
  assert.deepEqual(second.payload, { i: 1 });
  assert.deepEqual(second.tags, ["batched"]);
  assert.equal(second.batchId, result.batchId);
});

test("idempotency: a cached hit, and a failed run releases its key", async () => {
  const key = await idempotencyKeys.create("order-42", { scope: "global" });
  const first = await tasks.trigger("once", { a: 1 }, { idempotencyKey: key });
  const again = await tasks.trigger("once", { a: 2 }, { idempotencyKey: key });
  assert.equal(again.id, first.id, "the same key returns the same run");

  await finishRun(server, worker.id, first.id, false);
  assert.equal((await runs.retrieve(first.id)).status, "FAILED");
  const fresh = await tasks.trigger("once", { a: 3 }, { idempotencyKey: key });
  assert.notEqual(fresh.id, first.id, "a failed run's key starts a new run");

  await idempotencyKeys.reset("once", key);
  const afterReset = await tasks.trigger("once", { a: 4 }, { idempotencyKey: key });
  assert.notEqual(afterReset.id, fresh.id, "a reset key starts a new run");
});

test("runs.poll returns the finished run with its output", async () => {
  const handle = await tasks.trigger("once", { p: 1 });
  await finishRun(server, worker.id, handle.id, true);
  const done = await runs.poll(handle.id, { pollIntervalMs: 50 });
  assert.equal(done.status, "COMPLETED");
  assert.equal(done.isSuccess, true);
  assert.deepEqual(done.output, { done: true });
});

test("metadata set at trigger and updated through the API", async () => {
  const handle = await tasks.trigger("hello", {}, { metadata: { progress: 0 }, delay: "1h" });
  const updated = await call(server, "PUT", `/api/v1/runs/${handle.id}/metadata`, server.secretKey, {
    operations: [
      { type: "set", key: "progress", value: 0.5 },
      { type: "append", key: "processed", value: 1 },
      { type: "increment", key: "count", value: 1 },
    ],
  });
  assert.deepEqual(updated.metadata, { progress: 0.5, processed: [1], count: 1 });
  assert.deepEqual((await runs.retrieve(handle.id)).metadata, { progress: 0.5, processed: [1], count: 1 });
});

test("tags are added to a run", async () => {
  const handle = await tasks.trigger("hello", {}, { tags: ["one"], delay: "1h" });
  await call(server, "POST", `/api/v1/runs/${handle.id}/tags`, server.secretKey, { tags: ["two"] });
  assert.deepEqual((await runs.retrieve(handle.id)).tags, ["one", "two"]);
});

test("wait tokens: create, retrieve, complete, list", async () => {
  const token = await wait.createToken({ timeout: "1h", tags: ["approval"] });
  assert.match(token.id, /^waitpoint_/);
  assert.match(token.url, /\/callback\//);
  assert.equal((await wait.retrieveToken(token.id)).status, "WAITING");
  await wait.completeToken(token.id, { approved: true });
  const done = await wait.retrieveToken(token.id);
  assert.equal(done.status, "COMPLETED");
  assert.deepEqual(done.output, { approved: true });
  let found = false;
  for await (const t of wait.listTokens({ status: "COMPLETED" })) found ||= t.id === token.id;
  assert.ok(found);
});

test("errors: a bad key is an AuthenticationError, a missing run a NotFoundError", async () => {
  await assert.rejects(runs.retrieve("run_doesnotexist0000000000000"), NotFoundError);
  await assert.rejects(tasks.trigger("no-such-task", {}), (e) => e.status === 404);
  await assert.rejects(tasks.trigger("hello", {}, { tags: Array.from({ length: 11 }, (_, i) => `t${i}`) }), (e) => e.status === 422);
  configure({ baseURL: server.apiUrl, secretKey: "tr_dev_notarealkey000000000000" });
  try {
    await assert.rejects(runs.retrieve("run_whatever"), AuthenticationError);
  } finally {
    configure({ baseURL: server.apiUrl, secretKey: server.secretKey });
  }
});
