// The worker (engine) endpoints answer in exactly the shapes @trigger.dev/core's own Zod
// schemas expect: the official CLI parses every response with them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as S from "@trigger.dev/core/v3/schemas";
import * as W from "@trigger.dev/core/v3/runEngineWorker";
import { startServer, call } from "./server.mjs";

let server;
before(async () => (server = await startServer()));
after(async () => server?.stop());

function check(schema, json, what) {
  const parsed = schema.safeParse(json);
  assert.ok(parsed.success, `${what} does not match the SDK's schema: ${JSON.stringify(parsed.error?.issues)?.slice(0, 600)}`);
}

test("the dev CLI's whole loop passes the official schemas", async () => {
  const { projectRef: ref, pat } = server;
  check(S.WhoAmIResponseSchema, await call(server, "GET", `/api/v2/whoami?projectRef=${ref}`, pat), "whoami");
  const env = await call(server, "GET", `/api/v1/projects/${ref}/dev`, pat);
  check(S.GetProjectEnvResponse, env, "projects/{ref}/dev");
  const key = env.apiKey;
  const vars = await call(server, "GET", `/api/v1/projects/${ref}/envvars`, key);
  check(S.GetEnvironmentVariablesResponseBody, vars, "envvars");
  assert.ok(vars.variables.TRIGGER_OTEL_EXPORTER_OTLP_ENDPOINT.endsWith("/otel"));
  check(S.DevConfigResponseBody, await call(server, "GET", "/engine/v1/dev/config", key), "dev/config");

  const worker = await call(server, "POST", `/api/v1/projects/${ref}/background-workers`, key, {
    localOnly: true, engine: "V2", supportsLazyAttempts: true,
    metadata: { packageVersion: "4.8.3", cliPackageVersion: "4.8.3", contentHash: "w1", runtime: "node", runtimeVersion: "22",
      tasks: [{ id: "hello", filePath: "src/hello.ts", exportName: "hello", queue: { name: "task/hello" } }],
      queues: [{ name: "task/hello", concurrencyLimit: null }], sourceFiles: [] },
  });
  check(S.CreateBackgroundWorkerResponse, worker, "background-workers");

  const triggered = await call(server, "POST", "/api/v1/tasks/hello/trigger", key, {
    payload: JSON.stringify({ json: { n: 1 } }), options: { payloadType: "application/super+json" },
  });
  const dq = await call(server, "POST", "/engine/v1/dev/dequeue", key, { currentWorker: worker.id, oldWorkers: [] });
  check(S.DevDequeueResponseBody, dq, "dev/dequeue");
  const message = dq.dequeuedMessages.find((m) => m.run.friendlyId === triggered.id);
  assert.ok(message, "the triggered run is dequeued");
  assert.equal(message.backgroundWorker.friendlyId, worker.id);

  const run = message.run.friendlyId;
  const started = await call(server, "POST", `/engine/v1/dev/runs/${run}/snapshots/${message.snapshot.friendlyId}/attempts/start`, key, {});
  check(W.WorkerApiRunAttemptStartResponseBody, started, "attempts/start");
  assert.equal(started.execution.run.payload, JSON.stringify({ json: { n: 1 } }), "the payload is handed back verbatim");
  assert.equal(started.execution.attempt.number, 1);

  check(W.WorkerApiRunHeartbeatResponseBody,
    await call(server, "POST", `/engine/v1/dev/runs/${run}/snapshots/${started.snapshot.friendlyId}/heartbeat`, key, { cpu: 0, memory: 0 }), "heartbeat");
  check(W.WorkerApiRunLatestSnapshotResponseBody, await call(server, "GET", `/engine/v1/dev/runs/${run}/snapshots/latest`, key), "snapshots/latest");
  check(W.WorkerApiRunSnapshotsSinceResponseBody,
    await call(server, "GET", `/engine/v1/dev/runs/${run}/snapshots/since/${message.snapshot.friendlyId}`, key), "snapshots/since");

  const waited = await call(server, "POST", `/engine/v1/runs/${run}/wait/duration`, key, { date: new Date(Date.now() + 150).toISOString() });
  check(S.WaitForDurationResponseBody, waited, "wait/duration");
  let latest;
  for (let i = 0; i < 50; i++) {
    latest = await call(server, "GET", `/engine/v1/dev/runs/${run}/snapshots/latest`, key);
    if (latest.execution.snapshot.executionStatus === "EXECUTING" && latest.execution.completedWaitpoints.length) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  check(W.WorkerApiRunLatestSnapshotResponseBody, latest, "snapshots/latest after the wait");
  assert.equal(latest.execution.completedWaitpoints[0].id, waited.waitpoint.id, "the wait's waitpoint resumes the run");

  const completed = await call(server, "POST", `/engine/v1/dev/runs/${run}/snapshots/${latest.execution.snapshot.friendlyId}/attempts/complete`, key, {
    completion: { ok: true, id: run, output: JSON.stringify({ json: { done: 1 } }), outputType: "application/super+json", usage: { durationMs: 5 } },
  });
  check(W.WorkerApiRunAttemptCompleteResponseBody, completed, "attempts/complete");
  assert.equal(completed.result.attemptStatus, "RUN_FINISHED");
});
