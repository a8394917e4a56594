// Starts a real `trigger dev` process on a free port in a fresh folder and returns how to
// reach it. The binary comes from TRIGGER_BIN, else the workspace's debug build.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, "target");
const binary = process.env.TRIGGER_BIN ?? join(targetDir, "debug", "trigger");

export async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "trigger-compat-"));
  const child = spawn(binary, ["dev", "--port", "0", "--json", "--dir", join(dir, ".trigger")], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const line = await new Promise((resolveLine, reject) => {
    const timer = setTimeout(() => reject(new Error(`trigger dev did not start in time:\n${stderr}`)), 30_000);
    child.once("exit", (code) => reject(new Error(`trigger dev exited with ${code}:\n${stderr}`)));
    createInterface({ input: child.stdout }).once("line", (l) => {
      clearTimeout(timer);
      resolveLine(l);
    });
  });
  const info = JSON.parse(line);
  const credentials = JSON.parse(readFileSync(join(dir, ".trigger", "credentials.json"), "utf8"));
  return {
    apiUrl: info.apiUrl,
    secretKey: info.secretKey,
    projectRef: info.projectRef,
    pat: credentials.personalAccessToken,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// A raw call to the server (for the worker side, which the SDK does not expose).
export async function call(server, method, path, key, body) {
  const res = await fetch(server.apiUrl + path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${path} -> ${res.status} ${JSON.stringify(json)}`);
  return json;
}

// Registers a worker version with the given tasks, as the official CLI does.
export async function registerWorker(server, tasks) {
  return call(server, "POST", `/api/v1/projects/${server.projectRef}/background-workers`, server.secretKey, {
    localOnly: true,
    engine: "V2",
    supportsLazyAttempts: true,
    metadata: {
      packageVersion: "4.8.3",
      cliPackageVersion: "4.8.3",
      contentHash: `hash-${tasks.map((t) => t.id).join("-")}`,
      runtime: "node",
      runtimeVersion: process.versions.node,
      tasks,
      queues: [],
      sourceFiles: [],
    },
  });
}

// Claims a run and finishes its attempt as the worker would: ok, or failed without retry.
export async function finishRun(server, workerId, runId, ok) {
  const key = server.secretKey;
  for (let i = 0; i < 20; i++) {
    const dq = await call(server, "POST", "/engine/v1/dev/dequeue", key, {
      currentWorker: workerId,
      oldWorkers: [],
      timeoutMs: 500,
    });
    const m = dq.dequeuedMessages.find((x) => x.run.friendlyId === runId);
    for (const other of dq.dequeuedMessages.filter((x) => x !== m)) {
      await call(server, "POST", "/api/v2/runs/" + other.run.friendlyId + "/cancel", key);
    }
    if (!m) continue;
    const started = await call(server, "POST", `/engine/v1/dev/runs/${runId}/snapshots/${m.snapshot.friendlyId}/attempts/start`, key, {});
    const completion = ok
      ? { ok: true, id: runId, output: JSON.stringify({ json: { done: true } }), outputType: "application/super+json" }
      : { ok: false, id: runId, error: { type: "BUILT_IN_ERROR", name: "Error", message: "boom", stackTrace: "" }, skippedRetrying: true };
    return call(server, "POST", `/engine/v1/dev/runs/${runId}/snapshots/${started.snapshot.friendlyId}/attempts/complete`, key, { completion });
  }
  throw new Error(`run ${runId} was never dequeued`);
}
