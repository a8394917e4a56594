// Drives a running trigger.rs server with the official @trigger.dev/sdk 4.8.3 and checks the
// worker endpoints against @trigger.dev/core's own Zod schemas. Run it with ./run.sh.
import { configure, tasks, runs, batch, wait, idempotencyKeys, schedules, metadata } from "@trigger.dev/sdk";
import * as S from "@trigger.dev/core/v3/schemas";
import * as W from "@trigger.dev/core/v3/runEngineWorker";

const base = process.env.BASE, pat = process.env.PAT, ref = process.env.REF;
const call = async (method, path, key, body, schema) => {
  const res = await fetch(base + path, { method, headers: { authorization: `Bearer ${key}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${path} -> ${res.status} ${JSON.stringify(json)}`);
  if (schema) { const r = schema.safeParse(json); if (!r.success) throw new Error(`${path} schema: ${JSON.stringify(r.error.issues).slice(0, 800)}\n${JSON.stringify(json).slice(0, 800)}`); }
  return json;
};
const ok = (name) => console.log("ok", name);

const who = await call("GET", `/api/v2/whoami?projectRef=${ref}`, pat, undefined, S.WhoAmIResponseSchema); ok("whoami");
const env = await call("GET", `/api/v1/projects/${ref}/dev`, pat, undefined, S.GetProjectEnvResponse); ok("projects/dev");
const key = env.apiKey;
await call("GET", `/api/v1/projects/${ref}/envvars`, key, undefined, S.GetEnvironmentVariablesResponseBody); ok("envvars");
const cfg = await call("GET", `/engine/v1/dev/config`, key, undefined, S.DevConfigResponseBody); ok("dev/config");
const worker = await call("POST", `/api/v1/projects/${ref}/background-workers`, key, {
  localOnly: true, engine: "V2", supportsLazyAttempts: true,
  metadata: { packageVersion: "4.8.3", contentHash: "c1", cliPackageVersion: "4.8.3", runtime: "node", runtimeVersion: "22",
    tasks: [{ id: "hello", filePath: "src/hello.ts", exportName: "hello", queue: { name: "task/hello" }, retry: { maxAttempts: 3, factor: 2, minTimeoutInMs: 1000, maxTimeoutInMs: 10000, randomize: true }, machine: { preset: "small-1x" }, maxDuration: 60 },
            { id: "parent", filePath: "src/parent.ts" }],
    queues: [{ name: "task/hello", concurrencyLimit: null }], sourceFiles: [] } }, S.CreateBackgroundWorkerResponse); ok("background-workers");

configure({ baseURL: base, secretKey: key });
const h = await tasks.trigger("hello", { a: 1, at: new Date(0) }, { tags: ["x", "y"], ttl: "10m", idempotencyKey: "k1", machine: "small-2x", priority: 5, metadata: { m: 1 }, maxAttempts: 2, maxDuration: 30, concurrencyKey: "c" });
if (!h.id.startsWith("run_")) throw new Error("bad handle"); ok("tasks.trigger " + h.id);
const r = await runs.retrieve(h.id); if (r.payload.a !== 1 || r.payload.at !== "1970-01-01T00:00:00.000Z") throw new Error("payload " + JSON.stringify(r.payload)); ok("runs.retrieve (SuperJSON payload deserialized)");
const d = await tasks.trigger("hello", { d: 1 }, { delay: "1h" });
const rs = await runs.reschedule(d.id, { delay: "2h" }); if (rs.status !== "DELAYED") throw new Error("reschedule"); ok("runs.reschedule");
const c = await runs.cancel(d.id); ok("runs.cancel");
const rp = await runs.replay(d.id); ok("runs.replay " + rp.id);
let n = 0; for await (const run of runs.list({ status: ["QUEUED", "CANCELED", "DELAYED"], limit: 2 })) { n++; if (n > 10) break; } ok("runs.list iterated " + n);
const page = await runs.list({ taskIdentifier: "hello", tag: "x" }); if (page.data.length !== 1) throw new Error("filter"); ok("runs.list filtered");
const b = await tasks.batchTrigger("hello", [{ payload: { i: 0 } }, { payload: { i: 1 }, options: { tags: ["b"] } }]); ok("batchTrigger " + b.batchId + " runCount " + b.runCount);
const br = await batch.retrieve(b.batchId); if (br.runs.length !== 2) throw new Error("batch runs"); ok("batch.retrieve " + br.status);
const bt = await batch.trigger([{ id: "hello", payload: { z: 1 } }, { id: "parent", payload: {} }]); ok("batch.trigger " + bt.batchId);
const tok = await wait.createToken({ timeout: "1h", tags: ["t"] }); ok("wait.createToken " + tok.id + " " + (tok.publicAccessToken ? "with PAT" : "no PAT"));
const tr = await wait.retrieveToken(tok.id); if (tr.status !== "WAITING") throw new Error("token"); ok("wait.retrieveToken");
await wait.completeToken(tok.id, { approved: true }); ok("wait.completeToken");
const tr2 = await wait.retrieveToken(tok.id); if (tr2.status !== "COMPLETED" || tr2.output?.approved !== true) throw new Error("token output " + JSON.stringify(tr2)); ok("wait.retrieveToken completed output " + JSON.stringify(tr2.output));
let tn = 0; for await (const t of wait.listTokens({ status: "COMPLETED" })) tn++; ok("wait.listTokens " + tn);
await idempotencyKeys.reset("hello", "k1", { scope: "global" }).catch(e => { throw new Error("reset " + e) }); ok("idempotencyKeys.reset");
const bigText = "x".repeat(200 * 1024);
const big = await tasks.trigger("hello", { big: bigText });
const bigRun = await runs.retrieve(big.id); if (bigRun.payload?.big !== bigText) throw new Error("offloaded payload did not round-trip"); ok("offloaded 200 KB payload round-trips");
const tz = await schedules.timezones(); ok("schedules.timezones " + tz.timezones.length);
try { await tasks.trigger("nope", {}); throw new Error("expected 404"); } catch (e) { if (e.status !== 404) throw e; ok("unknown task -> " + e.constructor.name); }
try { await tasks.trigger("hello", {}, { tags: Array.from({ length: 11 }, (_, i) => "t" + i) }); throw new Error("expected 422"); } catch (e) { if (e.status !== 422) throw e; ok("11 tags -> " + e.constructor.name + ": " + e.message); }

// Worker protocol against the official Zod schemas.
const dq = await call("POST", "/engine/v1/dev/dequeue", key, { currentWorker: worker.id, oldWorkers: [] }, S.DevDequeueResponseBody);
const m = dq.dequeuedMessages.find(x => x.run.friendlyId === h.id) ?? dq.dequeuedMessages[0]; ok("dequeue " + dq.dequeuedMessages.length);
const st = await call("POST", `/engine/v1/dev/runs/${m.run.friendlyId}/snapshots/${m.snapshot.friendlyId}/attempts/start`, key, {}, W.WorkerApiRunAttemptStartResponseBody); ok("attempts/start");
await call("POST", `/engine/v1/dev/runs/${m.run.friendlyId}/snapshots/${st.snapshot.friendlyId}/heartbeat`, key, { cpu: 0, memory: 0 }, W.WorkerApiRunHeartbeatResponseBody); ok("heartbeat");
await call("GET", `/engine/v1/dev/runs/${m.run.friendlyId}/snapshots/latest`, key, undefined, W.WorkerApiRunLatestSnapshotResponseBody); ok("snapshots/latest");
await call("GET", `/engine/v1/dev/runs/${m.run.friendlyId}/snapshots/since/${m.snapshot.friendlyId}`, key, undefined, W.WorkerApiRunSnapshotsSinceResponseBody); ok("snapshots/since");
const wd = await call("POST", `/engine/v1/runs/${m.run.friendlyId}/wait/duration`, key, { date: new Date(Date.now() + 200).toISOString() }, S.WaitForDurationResponseBody); ok("wait/duration");
await new Promise(r => setTimeout(r, 400));
const lt = await call("GET", `/engine/v1/dev/runs/${m.run.friendlyId}/snapshots/latest`, key, undefined, W.WorkerApiRunLatestSnapshotResponseBody); ok("snapshots/latest after wait: " + lt.execution.snapshot.executionStatus + " " + lt.execution.completedWaitpoints.length);
const cp = await call("POST", `/engine/v1/dev/runs/${m.run.friendlyId}/snapshots/${lt.execution.snapshot.friendlyId}/attempts/complete`, key,
  { completion: { ok: true, id: m.run.friendlyId, output: JSON.stringify({ json: { done: 1 } }), outputType: "application/super+json", usage: { durationMs: 5 } } }, W.WorkerApiRunAttemptCompleteResponseBody); ok("attempts/complete " + cp.result.attemptStatus);
const fin = await runs.retrieve(m.run.friendlyId); ok("final " + fin.status + " output " + JSON.stringify(fin.output));
const polled = await runs.poll(m.run.friendlyId, { pollIntervalMs: 100 }); ok("runs.poll " + polled.status);
console.log("ALL OK");
