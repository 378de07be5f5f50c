/**
 * The node's page: join (partition, CSV, optional pinned fingerprint), confirm the server's
 * fingerprint, watch the connection, the rounds and the loss, and leave the federation. After a
 * reload the page resumes the node it ran from IndexedDB without asking again.
 *
 * For tests and for embedding pages, `window.colaFed` exposes what the page shows (`events`) and
 * `reloadWhenIdle()`, which reloads the page the next time the node is between messages.
 */
import type { SuperNodeExit } from "@cola-fed/core";
import { savedSettings, saveSettings, startBrowserNode, type NodeSettings, type RunningNode } from "./browser-node.js";
import { NodeDatabase } from "./idb.js";

/** One thing the page showed, in order (kept for `window.colaFed.events`). */
export type PageEvent =
  | { kind: "status"; text: string }
  | { kind: "activated"; nodeId: string }
  | { kind: "fingerprint"; server: string; fingerprint: string }
  | { kind: "trained"; round: number; loss: number; examples: number }
  | { kind: "exit"; code: number; reason: string };

const $ = <T extends HTMLElement>(id: string): T => {
  const element = document.getElementById(id);
  if (element === null) throw new Error(`the page lacks #${id}`);
  return element as T;
};

const events: PageEvent[] = [];
let running: RunningNode | undefined;
let pendingReload = false;
/** What the page shows of the node's progress, kept in IndexedDB so a reload shows it again. */
interface Progress {
  losses: { round: number; loss: number }[];
  run: string;
  server: string;
}
const PROGRESS = "page-progress";
let progress: Progress = { losses: [], run: "-", server: "-" };
let database: NodeDatabase | undefined;

function saveProgress(): void {
  void database?.put("settings", PROGRESS, progress);
}

function showProgress(): void {
  $("partition-line").textContent = progress.run;
  $("server-state").textContent = progress.server;
  showRounds();
}

function record(event: PageEvent): void {
  events.push(event);
}

function setStatus(text: string, tone: "idle" | "ok" | "busy" | "error" = "ok"): void {
  const element = $("connection");
  element.textContent = text;
  element.dataset.tone = tone;
  record({ kind: "status", text });
}

function log(line: string): void {
  const pre = $("log");
  const lines = `${pre.textContent ?? ""}${new Date().toLocaleTimeString()} ${line}\n`.split("\n");
  pre.textContent = lines.slice(-40).join("\n");
  pre.scrollTop = pre.scrollHeight;
  // progress lines of the core's ColaNode and of the SuperNode loop, shown as status
  const trained = /^round (\d+): trained on (\d+) examples, loss ([0-9.eE+-]+|nan|inf)/.exec(line);
  if (trained) {
    const round = Number(trained[1]);
    const loss = Number(trained[3]);
    progress.losses.push({ round, loss });
    saveProgress();
    record({ kind: "trained", round, loss, examples: Number(trained[2]) });
    showRounds();
  } else if (line.startsWith("Receiving: train")) setStatus("training", "busy");
  else if (line.startsWith("Receiving: query")) setStatus("joining the run (hello)", "busy");
  else if (line === "Sent successfully") setStatus("connected: waiting for the next round", "ok");
  else if (line.startsWith("hello: partition")) {
    progress.run = line.slice("hello: ".length);
    saveProgress();
    showProgress();
  }
}

function showRounds(): void {
  const losses = progress.losses;
  const last = losses[losses.length - 1];
  if (last === undefined) return;
  $("rounds").textContent = `${losses.length} trained (last: round ${last.round})`;
  $("loss").textContent = last.loss.toFixed(4);
  const body = $("loss-table");
  // bars span the losses' own range, so small changes between rounds show
  const low = Math.min(...losses.map((l) => l.loss));
  const high = Math.max(...losses.map((l) => l.loss));
  body.replaceChildren(...losses.map(({ round, loss }) => {
    const row = document.createElement("tr");
    const bar = document.createElement("td");
    const fill = document.createElement("span");
    fill.className = "bar";
    fill.style.width = `${high > low ? 15 + (85 * (loss - low)) / (high - low) : 100}%`;
    bar.append(fill);
    row.append(cell(String(round)), cell(loss.toFixed(4)), bar);
    return row;
  }));
}

function cell(text: string): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

/** Show the server's fingerprint and wait for the user's answer. */
function confirmServer(server: string, fingerprint: string): Promise<boolean> {
  record({ kind: "fingerprint", server, fingerprint });
  setStatus("waiting for you to confirm the server", "busy");
  $("server-name").textContent = server;
  $("server-fingerprint").textContent = fingerprint;
  const box = $("confirm");
  box.hidden = false;
  return new Promise((resolve) => {
    const answer = (trusted: boolean) => {
      box.hidden = true;
      $("trust").onclick = null;
      $("refuse").onclick = null;
      progress.server = trusted ? `${server}: ${fingerprint} (you confirmed it)` : `${server}: refused`;
      saveProgress();
      showProgress();
      log(trusted ? `you confirmed server ${server}` : `you refused server ${server}`);
      resolve(trusted);
    };
    $("trust").onclick = () => answer(true);
    $("refuse").onclick = () => answer(false);
  });
}

async function start(db: NodeDatabase, settings: NodeSettings, csv: string): Promise<void> {
  $("join").hidden = true;
  $("node").hidden = false;
  $("data-line").textContent = `${settings.dataName}, partition ${settings.partitionId} of ${settings.numPartitions}`;
  showProgress();
  setStatus("connecting to the SuperLink", "busy");
  try {
    running = await startBrowserNode(db, settings, csv, {
      log,
      activated: (nodeId) => {
        $("node-id").textContent = String(nodeId);
        record({ kind: "activated", nodeId: String(nodeId) });
        setStatus("connected: waiting for the server", "ok");
      },
      confirmServer,
    }, { wasmBase: new URL("ort/", location.href).href });
  } catch (err) {
    setStatus(`could not start: ${err instanceof Error ? err.message : String(err)}`, "error");
    return;
  }
  if (pendingReload) running.whenIdle(() => location.reload());
  void running.exit.then((exit) => finished(exit));
}

function finished(exit: SuperNodeExit): void {
  record({ kind: "exit", code: exit.code, reason: exit.reason });
  setStatus(exit.code === 0 ? `stopped: ${exit.reason}` : `disconnected: ${exit.reason}`, exit.code === 0 ? "idle" : "error");
  $("leave").setAttribute("disabled", "");
}

async function main(): Promise<void> {
  const db = await NodeDatabase.open();
  database = db;
  progress = (await db.get<Progress>("settings", PROGRESS)) ?? progress;
  (window as unknown as { colaFed: object }).colaFed = {
    events,
    reloadWhenIdle: () => {
      if (running === undefined) pendingReload = true;
      else running.whenIdle(() => location.reload());
    },
  };
  $("leave").onclick = async () => {
    if (running === undefined) return;
    $("leave").setAttribute("disabled", "");
    setStatus("leaving the federation", "busy");
    const exit = await running.leave();
    await db.delete("settings", PROGRESS);
    setStatus(`left the federation (${exit.reason})`, "idle");
  };
  const saved = await savedSettings(db);
  if (saved !== undefined) {
    log("resuming the node kept in this browser");
    await start(db, saved.settings, saved.csv);
    return;
  }
  setStatus("not joined", "idle");
  $("join-form").onsubmit = async (event) => {
    event.preventDefault();
    const file = $<HTMLInputElement>("csv").files?.[0];
    if (file === undefined) return;
    const settings: NodeSettings = {
      partitionId: Number($<HTMLInputElement>("partition-id").value),
      numPartitions: Number($<HTMLInputElement>("num-partitions").value),
      dataName: file.name,
      serverFingerprint: $<HTMLInputElement>("pinned").value.trim(),
    };
    const csv = await file.text();
    await saveSettings(db, settings, csv);
    await start(db, settings, csv);
  };
}

void main().catch((err: unknown) => setStatus(`the page failed: ${err instanceof Error ? err.message : String(err)}`, "error"));
