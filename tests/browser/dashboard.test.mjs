// The dashboard in a real headless Chromium, against the dashboard server as a separate
// process. Every test asserts what the page shows.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  startBrowser,
  login,
  waitText,
  markPage,
  wasNotReloaded,
  triggerFromTestForm,
} from "./harness.mjs";

let server;
let browser;
let page;

before(async () => {
  server = await startServer(["--demo"]);
  browser = await startBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe("dashboard", () => {
  it("keeps everything behind the login, and signs in with the token", async () => {
    // Without a session: pages send the browser to the login form, streams and actions refuse.
    for (const path of ["/dashboard/dev/runs", "/dashboard/prod/queues", "/dashboard/dev/keys"]) {
      const r = await fetch(server.url + path, { redirect: "manual" });
      assert.equal(r.status, 303, path);
      assert.match(r.headers.get("location"), /^\/dashboard\/login\?next=/);
    }
    const live = await fetch(server.url + "/dashboard/dev/live/runs", { redirect: "manual" });
    assert.equal(live.status, 401);
    const post = await fetch(server.url + "/dashboard/dev/queues/pause", {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "queue=process-queue&paused=true",
    });
    assert.equal(post.status, 401);

    const p = browser.context.pages()[0] || (await browser.context.newPage());
    await p.goto(`${server.url}/dashboard/dev/runs`);
    assert.match(p.url(), /\/dashboard\/login/);
    await p.getByLabel("Login token").fill("tr_dash_wrong");
    await p.getByRole("button", { name: "Sign in" }).click();
    assert.match(await p.locator("#login-error").textContent(), /not valid/);

    page = await login(browser.context, server);
    assert.equal(await page.locator("h1").first().textContent(), "Runs");
    assert.equal(await page.locator(".envs [aria-current]").textContent(), "Development");
    // The session cookie is HttpOnly: the page script cannot read it.
    assert.equal(await page.evaluate(() => document.cookie), "");
    await waitText(page, "#live-status", /live/);
  });

  it("shows a run appear live in the runs list when it is triggered", async () => {
    await page.goto(`${server.url}/dashboard/dev/runs`);
    await waitText(page, "#live-status", /^live$/);
    await markPage(page);
    const before = await page.locator("#runs-body tr").count();

    // Trigger from a second tab's Test form; the first tab is not touched.
    const other = await browser.context.newPage();
    const runId = await triggerFromTestForm(other, server, "dev", "child-task", { id: 7 }, "live-list");
    await other.close();

    const row = page.locator(`#runs-body tr[data-run="${runId}"]`);
    await row.waitFor({ timeout: 15_000 });
    assert.equal(await page.locator("#runs-body tr").first().getAttribute("data-run"), runId);
    assert.ok((await page.locator("#runs-body tr").count()) >= Math.min(before + 1, 50));
    assert.match(await row.locator(".task").textContent(), /child-task/);
    assert.match(await row.locator(".tags").textContent(), /live-list/);
    // The row's status follows the run to the end, still without a reload.
    await page.waitForFunction(
      (id) => document.querySelector(`tr[data-run="${id}"]`)?.dataset.status === "COMPLETED",
      runId,
      { timeout: 15_000 },
    );
    assert.match(await row.locator(".pill[data-status]").textContent(), /Completed/);
    assert.ok(await wasNotReloaded(page), "the list updated without a reload");
  });

  it("moves the metadata progress live, shows logs and the run tree", async () => {
    const data = Array.from({ length: 5 }, (_, i) => ({ id: i + 1 }));
    const runId = await triggerFromTestForm(page, server, "dev", "process-data", {
      userId: "u-1",
      data,
      delayMs: 700,
    });
    await markPage(page);
    assert.match(await page.locator("#payload-json").textContent(), /"userId": "u-1"/);

    // Progress moves through intermediate values to 100% while the page stays put.
    const seen = new Set();
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const text = await page.locator("#meta-progress-text").textContent().catch(() => null);
      if (text) seen.add(text.trim());
      if (text && text.trim() === "100%") break;
      await page.waitForTimeout(100);
    }
    assert.ok(seen.has("100%"), `progress reached 100%: ${[...seen]}`);
    const middle = [...seen].filter((t) => t !== "0%" && t !== "100%");
    assert.ok(middle.length >= 2, `progress showed intermediate values: ${[...seen]}`);
    await waitText(page, "#run-status", /Completed/);
    assert.match(await page.locator("#metadata-json").textContent(), /"count": 5/);
    assert.match(await page.locator("#output-json").textContent(), /"processed": 5/);
    assert.ok(await wasNotReloaded(page), "metadata moved without a reload");

    // Logs: in time order, with levels, expandable to their attributes.
    const logs = page.locator("#run-logs li.ev");
    assert.ok((await logs.count()) >= 7, "start, five items, completion, the attempt span");
    const messages = await page.locator("#run-logs .ev-msg").allTextContents();
    assert.ok(messages.indexOf("Task started") < messages.indexOf("Item processed"));
    assert.ok(messages.includes("Attempt 1"), "the attempt's span is listed");
    const item = logs.filter({ hasText: "Item processed" }).first();
    assert.equal(await item.locator(".lvl").textContent(), "info");
    assert.equal(await item.locator(".ev-body").isVisible(), false);
    await item.locator("summary").click();
    assert.ok(await item.locator(".ev-body").isVisible());
    assert.match(await item.locator(".ev-body pre").textContent(), /"itemId": 1/);
    await page.selectOption("#log-level", "warn");
    assert.equal(await item.isVisible(), false, "info lines hide at the warn level");
    await page.selectOption("#log-level", "");

    // The children it triggered, as a tree with links.
    await page.waitForFunction(() => document.querySelectorAll("#run-tree li a.mono").length === 5, null, {
      timeout: 15_000,
    });
    const child = page.locator("#run-tree li a.mono").first();
    const childId = (await child.textContent()).trim();
    await child.click();
    await page.waitForURL(new RegExp(childId));
    assert.match(await page.locator("#run-tree").textContent(), new RegExp(`Parent\\s*${runId}`));
  });

  it("cancels an executing run", async () => {
    const data = Array.from({ length: 40 }, (_, i) => ({ id: i }));
    const runId = await triggerFromTestForm(page, server, "dev", "process-data", { userId: "c", data, delayMs: 400 });
    await waitText(page, "#run-status", /Executing/);
    await page.locator("#cancel-run").click();
    await page.waitForURL(/notice=/);
    assert.match(await page.locator("#notice").textContent(), /Cancel/);
    await waitText(page, "#run-status", /Canceled/);
    assert.equal(await page.locator("#cancel-run").count(), 0, "no cancel button on a finished run");
    assert.match(await page.locator("#run-output").textContent(), /Canceled from the dashboard/);
    assert.match(await page.locator("#run-id").textContent(), new RegExp(runId));
  });

  it("replays a run with an edited payload", async () => {
    const original = await triggerFromTestForm(page, server, "dev", "child-task", { id: 1 });
    await waitText(page, "#run-status", /Completed/);
    await page.locator("details.replay-edit summary").click();
    await page.getByLabel("Payload (JSON)").fill('{"id": 42}');
    await page.getByRole("button", { name: "Replay with this payload" }).click();
    await page.waitForURL((u) => !u.pathname.endsWith(original));
    assert.match(await page.locator("#notice").textContent(), new RegExp(`Replayed from ${original}`));
    assert.match(await page.locator("#payload-json").textContent(), /"id": 42/);
    assert.match(await page.locator("#run-summary").textContent(), new RegExp(`Replayed from\\s*${original}`));
    await waitText(page, "#run-status", /Completed/);
    assert.match(await page.locator("#output-json").textContent(), /processed-42/);

    // A plain replay keeps the payload.
    await page.locator("#replay-run").click();
    await page.waitForURL(/notice=Replayed/);
    assert.match(await page.locator("#payload-json").textContent(), /"id": 42/);
  });

  it("triggers a task from the Test form and shows the task's settings", async () => {
    await page.goto(`${server.url}/dashboard/dev/tasks`);
    const card = page.locator('article[data-task="process-data"]');
    const props = await card.locator("dl").textContent();
    assert.match(props, /process-queue/);
    assert.match(props, /limit 3/);
    assert.match(props, /3 attempts/);
    assert.match(props, /medium-1x/);
    const runsBefore = Number(await card.locator(".counts").getAttribute("data-total"));
    const runId = await triggerFromTestForm(page, server, "dev", "child-task", { id: 99 }, "from-test-form");
    assert.match(await page.locator("#notice").textContent(), /Test run of child-task triggered/);
    assert.match(await page.locator("h1").textContent(), /child-task/);
    assert.match(await page.locator("#run-summary").textContent(), /Test run\s*yes/);
    await waitText(page, "#run-status", /Completed/);
    assert.match(await page.locator("#output-json").textContent(), /processed-99/);
    await page.goto(`${server.url}/dashboard/dev/runs?tag=from-test-form`);
    assert.equal(await page.locator("#runs-body tr").count(), 1);
    assert.equal(await page.locator("#runs-body tr").getAttribute("data-run"), runId);
    await page.goto(`${server.url}/dashboard/dev/tasks`);
    const runsAfter = Number(await card.locator(".counts").getAttribute("data-total"));
    assert.ok(runsAfter >= runsBefore, "recent counts do not go down");
  });

  it("pauses a queue so its runs stay queued, and resumes it", async () => {
    await page.goto(`${server.url}/dashboard/dev/queues`);
    const row = page.locator('tr[data-queue="process-queue"]');
    assert.match(await row.textContent(), /Active/);
    await row.getByRole("button", { name: "Pause process-queue" }).click();
    await page.waitForURL(/notice=/);
    assert.match(await page.locator("#notice").textContent(), /paused/);
    assert.match(await row.textContent(), /Paused/);
    assert.equal(await row.getAttribute("data-paused"), "true");

    const runId = await triggerFromTestForm(page, server, "dev", "process-data", {
      userId: "p",
      data: [{ id: 1 }],
      delayMs: 50,
    });
    await page.waitForTimeout(2500);
    assert.match(await page.locator("#run-status").textContent(), /Queued/, "a paused queue hands out nothing");

    // The queue page counts it as queued.
    await page.goto(`${server.url}/dashboard/dev/queues`);
    assert.ok(Number(await row.locator('[data-col="queued"]').textContent()) >= 1);
    await row.getByRole("button", { name: "Resume process-queue" }).click();
    await page.waitForURL(/notice=/);
    assert.match(await row.textContent(), /Active/);

    await page.goto(`${server.url}/dashboard/dev/runs/${runId}`);
    await waitText(page, "#run-status", /Completed/);
  });

  it("switches environment and shows only that environment's runs", async () => {
    const prodRun = await triggerFromTestForm(page, server, "prod", "child-task", { id: 5 }, "prod-only");
    await page.goto(`${server.url}/dashboard/dev/runs`);
    const devIds = await page.locator("#runs-body tr").evaluateAll((rows) => rows.map((r) => r.dataset.run));
    assert.ok(devIds.length > 0);
    assert.ok(!devIds.includes(prodRun), "the prod run is not in dev");

    await page.getByRole("navigation", { name: "Environment" }).getByRole("link", { name: "Production" }).click();
    await page.waitForURL(/\/dashboard\/prod\/runs/);
    assert.equal(await page.locator(".envs [aria-current]").textContent(), "Production");
    const prodIds = await page.locator("#runs-body tr").evaluateAll((rows) => rows.map((r) => r.dataset.run));
    assert.ok(prodIds.includes(prodRun));
    assert.ok(prodIds.every((id) => !devIds.includes(id)), "no dev run shows in prod");
    // A dev run's page is not found from prod.
    const r = await page.goto(`${server.url}/dashboard/prod/runs/${devIds[0]}`);
    assert.equal(r.status(), 404);
  });

  it("reschedules a delayed run, completes a token by hand, lists batches", async () => {
    await page.goto(`${server.url}/dashboard/dev/runs?status=DELAYED`);
    const delayed = page.locator("#runs-body tr").first();
    const id = await delayed.getAttribute("data-run");
    await delayed.locator(".task a").click();
    await page.locator("summary", { hasText: "Reschedule" }).click();
    await page.getByLabel(/New delay/).fill("2s");
    await page.getByRole("button", { name: "Reschedule" }).click();
    await page.waitForURL(/notice=Rescheduled/);
    await waitText(page, "#run-status", /Executing|Completed|Queued/, 15_000);
    assert.match(await page.locator("#run-id").textContent(), new RegExp(id));

    await page.goto(`${server.url}/dashboard/dev/waitpoints`);
    const token = page.locator("tr[data-token]").first();
    assert.match(await token.textContent(), /Waiting/);
    await token.locator("summary", { hasText: "Complete" }).click();
    await token.getByLabel("Output (JSON)").fill('{"approved": true}');
    await token.getByRole("button", { name: "Complete token" }).click();
    await page.waitForURL(/notice=/);
    assert.match(await page.locator("tr[data-token]").first().textContent(), /Completed/);
    assert.match(await page.locator("tr[data-token]").first().textContent(), /"approved": true/);

    await page.goto(`${server.url}/dashboard/dev/batches`);
    const batch = page.locator("tr[data-batch]").first();
    assert.match(await batch.textContent(), /3 \/ 3/);
    await batch.locator("a").first().click();
    await page.waitForURL(/batch=batch_/);
    assert.equal(await page.locator("#runs-body tr").count(), 3);
  });

  it("creates an API key, reveals it once, and revokes it", async () => {
    await page.goto(`${server.url}/dashboard/dev/keys`);
    await page.getByLabel("Name").fill("browser-test");
    await page.getByRole("button", { name: "Create key" }).click();
    const plain = await page.locator("#new-key").inputValue();
    assert.match(plain, /^tr_dev_[A-Za-z0-9]{24}$/);
    await page.goto(`${server.url}/dashboard/dev/keys`);
    assert.equal(await page.locator("#new-key").count(), 0, "shown once only");
    const row = page.locator("tr", { hasText: "browser-test" });
    assert.match(await row.textContent(), new RegExp(plain.slice(0, 11)));
    assert.ok(!(await page.content()).includes(plain), "the full key is not on the page again");
    await row.getByRole("button", { name: "Revoke browser-test" }).click();
    await page.waitForURL(/notice=/);
    assert.match(await page.locator("tr", { hasText: "browser-test" }).textContent(), /Revoked/);
  });

  it("is usable by keyboard, labels its controls, and fits 1280 and 390 px", async () => {
    // Keyboard: the first Tab reaches the skip link, which moves focus to the content.
    await page.goto(`${server.url}/dashboard/dev/runs`);
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
    await page.keyboard.press("Enter");
    assert.equal(await page.evaluate(() => document.activeElement.id), "main");
    // Tab on to a run link and open it with Enter.
    for (let i = 0; i < 60; i++) {
      await page.keyboard.press("Tab");
      const href = await page.evaluate(() => document.activeElement.getAttribute("href") || "");
      if (/\/runs\/run_/.test(href)) break;
    }
    await page.keyboard.press("Enter");
    await page.waitForURL(/\/runs\/run_/);
    const runUrl = page.url();

    const pages = ["/dashboard/dev/runs", runUrl, "/dashboard/dev/tasks", "/dashboard/dev/queues", "/dashboard/dev/keys"];
    for (const width of [1280, 390]) {
      await page.setViewportSize({ width, height: 900 });
      for (const p of pages) {
        await page.goto(p.startsWith("http") ? p : server.url + p);
        const { overflow, unlabeled } = await page.evaluate(() => ({
          overflow: document.documentElement.scrollWidth - window.innerWidth,
          unlabeled: [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
            .map((el) => el.outerHTML),
        }));
        assert.ok(overflow <= 0, `${p} at ${width}px overflows by ${overflow}px`);
        assert.deepEqual(unlabeled, [], `${p}: every control has a label`);
        const h1 = await page.locator("h1").first().boundingBox();
        assert.ok(h1 && h1.x >= 0 && h1.x + h1.width <= width, `${p} heading fits at ${width}px`);
      }
    }
    await page.setViewportSize({ width: 1280, height: 900 });
  });
});
