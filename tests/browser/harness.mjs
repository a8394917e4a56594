// Starts the dashboard as a separate process over real HTTP and drives Debian's Chromium.
//
// The server is the dashboard's `dev` example (engine + dashboard + an in-process worker
// running the seed's tasks), built with cargo into $CARGO_TARGET_DIR (or ../../target).
// Set DASHBOARD_BIN to use a binary that is already built.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "..", "..");

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function build(cargoArgs, relPath) {
  const target = process.env.CARGO_TARGET_DIR || path.join(repo, "target");
  execFileSync("cargo", ["build", "-q", ...cargoArgs], {
    cwd: repo,
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, CARGO_TARGET_DIR: target },
  });
  const bin = path.join(target, "debug", relPath);
  if (!existsSync(bin)) throw new Error(`no binary at ${bin}`);
  return bin;
}

function binary() {
  if (process.env.DASHBOARD_BIN) return process.env.DASHBOARD_BIN;
  return build(["-p", "trigger-dashboard", "--example", "dev"], path.join("examples", "dev"));
}

/** Starts the dashboard's dev example; resolves to { url, login, token, devKey, stop() }. */
export async function startServer(extraArgs = []) {
  return startProcess(binary(), ["--port", "0", ...extraArgs]);
}

/** Starts the real `trigger dev` in a fresh folder; resolves to its `--json` line and stop(). */
export async function startTriggerDev() {
  const bin = process.env.TRIGGER_BIN || build(["-p", "trigger-cli", "--bin", "trigger"], "trigger");
  const dir = mkdtempSync(path.join(tmpdir(), "trigger-dev-"));
  const server = await startProcess(bin, ["dev", "--port", "0", "--dir", dir, "--json"]);
  const stop = server.stop;
  return {
    ...server,
    async stop() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function startProcess(bin, args) {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const info = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), 60_000);
    child.stdout.on("data", (d) => {
      out += d;
      const line = out.split("\n").find((l) => l.startsWith("{"));
      if (line && out.includes("\n")) {
        clearTimeout(timer);
        resolve(JSON.parse(line));
      }
    });
    child.on("exit", (code) => reject(new Error(`server exited with ${code}: ${stderr}`)));
  });
  return {
    ...info,
    async stop() {
      child.kill("SIGINT");
      await new Promise((r) => {
        const t = setTimeout(() => {
          child.kill("SIGKILL");
          r();
        }, 5000);
        child.on("exit", () => {
          clearTimeout(t);
          r();
        });
      });
    },
  };
}

/** A fresh Chromium profile; resolves to { context, close() }. */
export async function startBrowser(viewport = { width: 1280, height: 900 }) {
  const userDataDir = mkdtempSync(path.join(tmpdir(), "trigger-dash-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport,
  });
  // Confirmation dialogs (cancel, revoke) are accepted, as a user would.
  context.on("page", (p) => p.on("dialog", (d) => d.accept().catch(() => {})));
  return {
    context,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Signs in through the login form and returns the page. */
export async function login(context, server) {
  const page = context.pages()[0] || (await context.newPage());
  page.on("dialog", (d) => d.accept().catch(() => {}));
  await page.goto(`${server.url}/dashboard/dev/runs`);
  await page.getByLabel("Login token").fill(server.token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/dashboard\/dev\/runs/);
  return page;
}

/** Waits until the text of `selector` matches `re`; returns that text. */
export async function waitText(page, selector, re, timeout = 20_000) {
  const handle = await page.waitForFunction(
    ([sel, src, flags]) => {
      const el = document.querySelector(sel);
      const text = el ? el.textContent.trim() : null;
      return text !== null && new RegExp(src, flags).test(text) ? text : null;
    },
    [selector, re.source, re.flags],
    { timeout, polling: 50 },
  );
  return handle.jsonValue();
}

/** Marks the page so a test can prove it was not reloaded. */
export async function markPage(page) {
  await page.evaluate(() => (window.__notReloaded = true));
}

export async function wasNotReloaded(page) {
  return page.evaluate(() => window.__notReloaded === true);
}

/** Triggers a task from its Test form on the Tasks page; returns the new run's id. */
export async function triggerFromTestForm(page, server, env, task, payload, tags = "") {
  await page.goto(`${server.url}/dashboard/${env}/tasks`);
  const card = page.locator(`article[data-task="${task}"]`);
  await card.locator("summary", { hasText: "Test" }).click();
  await card.getByLabel("Payload (JSON)").fill(JSON.stringify(payload));
  if (tags) await card.getByLabel(/Tags/).fill(tags);
  await card.getByRole("button", { name: "Run test" }).click();
  await page.waitForURL(/\/runs\/run_/);
  return (await page.locator("#run-id").textContent()).trim();
}
