// The dashboard inside the real server: `trigger dev` as a separate process, signed in with
// the link it prints, fed by the management API.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { startTriggerDev, startBrowser, waitText, markPage, wasNotReloaded } from "./harness.mjs";

let server;
let browser;

before(async () => {
  server = await startTriggerDev();
  browser = await startBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe("trigger dev", () => {
  it("serves the dashboard behind its login link, live from the API", async () => {
    const api = server.apiUrl;
    // Health stays public; the dashboard does not.
    assert.equal((await fetch(`${api}/healthz`)).status, 200);
    const anon = await fetch(`${api}/dashboard/dev/runs`, { redirect: "manual" });
    assert.equal(anon.status, 303);

    const page = await browser.context.newPage();
    await page.goto(server.dashboardUrl);
    await page.waitForURL(/\/dashboard\/dev\/runs$/);
    assert.equal(await page.locator("h1").first().textContent(), "Runs");
    await waitText(page, "#live-status", /^live$/);
    await markPage(page);

    // A worker version registers its task (as the CLI does), then the Tasks page lists it.
    const headers = { authorization: `Bearer ${server.secretKey}`, "content-type": "application/json" };
    const reg = await fetch(`${api}/api/v1/projects/${server.projectRef}/background-workers`, {
      method: "POST",
      headers,
      body: JSON.stringify({
        metadata: {
          contentHash: "browser-test",
          packageVersion: "4.0.0",
          tasks: [{ id: "hello-world", filePath: "src/trigger/hello.ts", queue: { name: "hello", concurrencyLimit: 1 } }],
          queues: [{ name: "hello", concurrencyLimit: 1 }],
        },
      }),
    });
    assert.equal(reg.status, 200, await reg.clone().text());
    const tasks = await browser.context.newPage();
    await tasks.goto(`${api}/dashboard/dev/tasks`);
    assert.match(await tasks.locator('article[data-task="hello-world"] dl').textContent(), /hello.*limit 1/s);
    await tasks.close();

    // A run triggered through the API (the way the SDK does) appears without a reload.
    const res = await fetch(`${api}/api/v1/tasks/hello-world/trigger`, {
      method: "POST",
      headers,
      body: JSON.stringify({ payload: { name: "browser" }, options: { tags: ["from-api"] } }),
    });
    assert.equal(res.status, 200);
    const { id } = await res.json();
    const row = page.locator(`#runs-body tr[data-run="${id}"]`);
    await row.waitFor({ timeout: 15_000 });
    assert.match(await row.locator(".task").textContent(), /hello-world/);
    assert.match(await row.locator(".tags").textContent(), /from-api/);
    assert.ok(await wasNotReloaded(page));

    // Cancel it from the dashboard; the API agrees.
    await row.locator(".task a").click();
    await page.waitForURL(new RegExp(id));
    assert.match(await page.locator("#payload-json").textContent(), /"name": "browser"/);
    await page.locator("#cancel-run").click();
    await waitText(page, "#run-status", /Canceled/);
    const run = await (
      await fetch(`${api}/api/v3/runs/${id}`, { headers: { authorization: `Bearer ${server.secretKey}` } })
    ).json();
    assert.equal(run.status, "CANCELED");
  });
});
