/**
 * The browser node in headless Chromium, fed over stdin/stdout: the counterpart of
 * `js/packages/node/bench/node-process.mjs` (same frames in, same frames out) for
 * `python -m benchmarks.browser_node`.
 *
 *   node drive-bench.mjs '{"page": <built bench folder>, "csv": ..., "nodeId": 1001,
 *                          "partitionId": 1, "numPartitions": 2, "chromium": "/usr/bin/chromium"}'
 *
 * It serves the bench page (build-bench.mjs's folder), the CSV and the message in hand on
 * 127.0.0.1 (a secure context: IndexedDB and WebCrypto as on a real site), opens the page in
 * Debian's Chromium through playwright-core (a persistent profile in a temporary folder, so
 * IndexedDB is on disk as for a person's browser), and per message from stdin:
 *   1. reads the frames node-process.mjs reads (tree, count, objects) and holds them at
 *      `/bench/message`;
 *   2. calls `colaBench.handle()` in the page (bench-page.ts), which fetches them, runs the
 *      browser node, and posts its reply's frames to `/bench/reply`;
 *   3. writes those frames to stdout as they came, then a JSON frame of stats: the page's
 *      timings (handle_s, message_s, fit_s, session_s, message_bytes, error) and the tab's memory:
 *        peak_rss_mb   the tab's renderer process's peak resident memory so far (VmHWM in
 *                      /proc/<pid>/status; Blink, V8 and its heap, onnxruntime-web's WASM memory);
 *        held_rss_mb   its resident memory after the message, once garbage is collected (VmRSS);
 *        heap_used_mb  V8's heap in use then (CDP Performance.getMetrics JSHeapUsedSize, after
 *                      HeapProfiler.collectGarbage): it leaves out ArrayBuffer backing stores,
 *                      so the WASM memory that holds the graphs' weights and activations is not
 *                      in it; hence the renderer's RSS as the tab's memory;
 *        browser_pss_mb  the proportional set size of every process of the browser then (browser,
 *                      zygotes, GPU/utility processes, renderers; shared pages split among them,
 *                      so the sum is what the whole browser holds);
 *        page_loaded   (first message) peak_rss_mb, held_rss_mb, heap_used_mb, browser_pss_mb
 *                      with the bench page loaded, before the node starts (a tab's baseline);
 *        renderers     how many renderer processes there were (the tab's is the largest);
 *        webgpu        (first message) what the page's navigator.gpu offers.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { chromium } from "playwright-core";
import { frame, FrameReader, writeFrame } from "../../node/bench/frames.mjs";

const config = JSON.parse(process.argv[2] ?? "null");
if (config === null) {
  process.stderr.write("usage: node drive-bench.mjs '<json config>'\n");
  process.exit(2);
}
const log = (line) => process.stderr.write(`[browser-node] ${line}\n`);

// ---- the page's server: static files, the CSV, the message in hand and its reply

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".map": "application/json" };
let pending; // the frames of the message in hand
let replied; // resolves with the reply's frames

const server = createServer((request, response) => {
  const path = new URL(request.url, "http://127.0.0.1").pathname;
  const send = (status, body, type = "application/octet-stream") => {
    response.writeHead(status, { "content-type": type, "cache-control": "no-store" });
    response.end(body);
  };
  if (path === "/bench/message" && request.method === "GET") return pending ? send(200, pending) : send(409, "no message in hand");
  if (path === "/bench/data.csv") return send(200, readFileSync(config.csv), "text/csv");
  if (path === "/bench/reply" && request.method === "POST") {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => { replied?.(Buffer.concat(chunks)); send(204, ""); });
    return undefined;
  }
  const file = normalize(join(config.page, path === "/" ? "bench.html" : path));
  if (!file.startsWith(config.page + sep) || !existsSync(file)) return send(404, "not found", "text/plain");
  return send(200, readFileSync(file), TYPES[extname(file)] ?? "application/octet-stream");
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

// ---- the browser's processes (/proc): the tab's renderer and the whole tree

function statusKb(pid, field) {
  try {
    const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith(`${field}:`));
    return line === undefined ? 0 : Number.parseInt(line.split(/\s+/)[1], 10);
  } catch {
    return 0; // the process ended
  }
}

/** This process's descendants (the browser and all it started) with their command lines. */
function browserProcesses() {
  const parents = new Map();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      parents.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch { /* ended */ }
  }
  const mine = new Set([process.pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, parent] of parents) {
      if (!mine.has(pid) && mine.has(parent)) { mine.add(pid); grew = true; }
    }
  }
  mine.delete(process.pid);
  return [...mine].map((pid) => {
    let cmdline = "";
    try { cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " "); } catch { /* ended */ }
    return { pid, cmdline };
  });
}

/** Proportional set size (shared pages split among their processes): sums to what the browser holds. */
function pssKb(pid) {
  try {
    const line = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8").split("\n").find((l) => l.startsWith("Pss:"));
    return line === undefined ? 0 : Number.parseInt(line.split(/\s+/)[1], 10);
  } catch {
    return 0;
  }
}

function memory() {
  const processes = browserProcesses();
  const renderers = processes.filter((p) => p.cmdline.includes("--type=renderer"))
    .map((p) => ({ ...p, rss: statusKb(p.pid, "VmRSS") })).sort((a, b) => b.rss - a.rss);
  const tab = renderers[0];
  return {
    peak_rss_mb: tab === undefined ? 0 : statusKb(tab.pid, "VmHWM") / 1024,
    held_rss_mb: tab === undefined ? 0 : tab.rss / 1024,
    browser_pss_mb: processes.reduce((n, p) => n + pssKb(p.pid), 0) / 1024,
    renderers: renderers.length,
  };
}

// ---- the browser

const profile = mkdtempSync(join(tmpdir(), "cola-fed-bench-profile-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: config.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"], // root in a container: no user namespaces
});
try {
  const page = context.pages()[0] ?? await context.newPage();
  page.on("console", (message) => log(message.text().slice(0, 2000)));
  page.on("pageerror", (error) => log(`page error: ${String(error).slice(0, 2000)}`));
  await page.goto(`${origin}/bench.html`);
  await page.waitForFunction(() => window.colaBench !== undefined);
  const cdp = await context.newCDPSession(page);
  await cdp.send("Performance.enable");
  const collected = async () => {
    await cdp.send("HeapProfiler.collectGarbage");
    const metrics = Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
    return { ...memory(), heap_used_mb: metrics.JSHeapUsedSize / 2 ** 20, heap_total_mb: metrics.JSHeapTotalSize / 2 ** 20 };
  };
  const pageLoaded = await collected();
  const webgpu = await page.evaluate(() => window.colaBench.webgpu());
  log(`WebGPU: ${JSON.stringify(webgpu)}`);
  await page.evaluate((settings) => window.colaBench.start(settings), {
    nodeId: String(config.nodeId), partitionId: config.partitionId, numPartitions: config.numPartitions,
    dataName: config.csv.split("/").pop(),
  });

  const reader = new FrameReader(process.stdin);
  for (let first = true; ; first = false) {
    const tree = await reader.next();
    if (tree === undefined) break;
    const count = await reader.next();
    const objects = [];
    for (let i = Number(Buffer.from(count).toString()); i > 0; i--) objects.push(await reader.next());
    pending = Buffer.concat([tree, count, ...objects].map(frame)); // forwarded to the page as read
    const reply = new Promise((resolve) => { replied = resolve; });
    const stats = await page.evaluate(() => window.colaBench.handle());
    process.stdout.write(await reply);
    pending = replied = undefined;
    writeFrame(Buffer.from(JSON.stringify({
      ...stats, ...await collected(),
      ...(first ? { webgpu, page_loaded: pageLoaded, cross_origin_isolated: await page.evaluate(() => window.colaBench.crossOriginIsolated) } : {}),
    })));
  }
} finally {
  await context.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
}
