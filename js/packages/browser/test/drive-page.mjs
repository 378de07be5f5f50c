// Drives the browser node's page in headless Chromium (Debian's, through playwright-core; no
// browser download) the way a person uses it: open the page, enter the partition, pick the CSV,
// join, confirm the server's fingerprint; then reload the page once the node has trained
// `reloadAfterRound` rounds (at the node's next idle point) and watch it resume from IndexedDB;
// when the file `<out>/finish` appears, take a screenshot, press "Leave the federation" and
// report. Progress goes to `<out>/driver.jsonl`, one JSON object a line, for the test to read.
//
//   node drive-page.mjs '{"url": ..., "csv": ..., "partitionId": 1, "numPartitions": 2,
//                         "reloadAfterRound": 2, "out": ..., "chromium": "/usr/bin/chromium"}'
import { appendFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);
const report = (record) => appendFileSync(join(config.out, "driver.jsonl"), `${JSON.stringify({ ...record, at: Date.now() })}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await chromium.launch({
  executablePath: config.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"], // root in a container: no user namespaces
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 1000 } });
  page.on("console", (message) => report({ kind: "console", type: message.type(), text: message.text().slice(0, 2000) }));
  page.on("pageerror", (error) => report({ kind: "pageerror", text: String(error).slice(0, 2000) }));
  await page.goto(config.url);
  await page.fill("#partition-id", String(config.partitionId));
  await page.fill("#num-partitions", String(config.numPartitions));
  await page.setInputFiles("#csv", config.csv);
  await page.click("button[type=submit]");

  // every event the page showed, across reloads (the page's list starts again after one)
  const seen = [];
  let load = 0;
  let taken = 0;
  const collect = async () => {
    const events = await page.evaluate(() => window.colaFed?.events ?? []).catch(() => null);
    if (events === null) return; // navigating
    for (const event of events.slice(taken)) {
      seen.push({ ...event, load });
      report({ kind: "page", load, event });
    }
    taken = events.length;
  };

  let reloaded = false;
  let confirmed = false;
  while (!existsSync(join(config.out, "finish"))) {
    await collect();
    if (!confirmed && await page.isVisible("#confirm").catch(() => false)) {
      confirmed = true;
      const shown = (await page.textContent("#server-fingerprint"))?.trim();
      report({ kind: "confirming", fingerprint: shown });
      await page.click("#trust");
    }
    const trained = seen.filter((e) => e.kind === "trained").length;
    if (!reloaded && trained >= config.reloadAfterRound) {
      reloaded = true;
      report({ kind: "reloading", trained });
      const navigation = page.waitForEvent("load", { timeout: 120_000 });
      await page.evaluate(() => window.colaFed.reloadWhenIdle());
      await navigation;
      load += 1;
      taken = 0;
      report({ kind: "reloaded" });
    }
    await sleep(250);
  }
  await collect();
  await page.screenshot({ path: join(config.out, "browser-node.png"), fullPage: true });
  await page.click("#leave");
  await page.waitForFunction(() => document.getElementById("connection")?.textContent?.startsWith("left the federation"), null, { timeout: 120_000 });
  await collect();
  const state = await page.evaluate(() => ({
    connection: document.getElementById("connection")?.textContent,
    nodeId: document.getElementById("node-id")?.textContent,
  }));
  report({ kind: "done", state });
} catch (error) {
  report({ kind: "error", text: String(error?.stack ?? error) });
  process.exitCode = 1;
} finally {
  await browser.close();
}
