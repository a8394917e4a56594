// Takes the screenshots under docs/screenshots/ from a live demo server:
//   node screenshots.mjs
import { mkdirSync } from "node:fs";
import path from "node:path";
import { startServer, startBrowser, login, triggerFromTestForm, waitText, repo } from "./harness.mjs";

const out = path.join(repo, "docs", "screenshots");
mkdirSync(out, { recursive: true });

const server = await startServer(["--demo"]);
const browser = await startBrowser({ width: 1280, height: 800 });
try {
  const page = await login(browser.context, server);
  const shot = (name) => page.screenshot({ path: path.join(out, name), fullPage: false });

  // A few more runs so the list has some history, and one mid-flight run to watch.
  for (let i = 0; i < 6; i++) {
    await triggerFromTestForm(page, server, "dev", "child-task", { id: i }, i % 2 ? "user:123" : "");
  }
  const data = Array.from({ length: 8 }, (_, i) => ({ id: i + 1 }));
  const running = await triggerFromTestForm(page, server, "dev", "process-data", { userId: "123", data, delayMs: 900 });
  await waitText(page, "#meta-progress-text", /^(3[0-9]|4[0-9]|5[0-9])%$/, 30_000);
  await page.locator("#run-logs li.ev", { hasText: "Item processed" }).first().locator("summary").click();
  await shot("run.png");

  await page.goto(`${server.url}/dashboard/dev/runs`);
  await page.waitForTimeout(300);
  await shot("runs.png");

  await page.goto(`${server.url}/dashboard/dev/runs?status=FAILED`);
  await page.locator("#runs-body tr .task a").first().click();
  await page.waitForURL(/runs\/run_/);
  await shot("run-failed.png");

  await page.goto(`${server.url}/dashboard/dev/tasks`);
  await page.locator('article[data-task="process-data"] summary', { hasText: "Test" }).click();
  await shot("tasks.png");

  await page.goto(`${server.url}/dashboard/dev/queues`);
  await shot("queues.png");

  await page.goto(`${server.url}/dashboard/dev/keys`);
  await page.getByLabel("Name").fill("backend");
  await page.getByRole("button", { name: "Create key" }).click();
  await shot("keys.png");

  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${server.url}/dashboard/dev/runs`);
  await shot("runs-mobile.png");
  await page.goto(`${server.url}/dashboard/dev/runs/${running}`);
  await shot("run-mobile.png");
  console.log(`screenshots written to ${out}`);
} finally {
  await browser.close();
  await server.stop();
}
