/**
 * A cola-fed node in a browser tab: the core's {@link ColaNode} and {@link SuperNode} over the
 * browser environment (environment.ts) and the same-origin Fleet transport (transport.ts).
 *
 * The page keeps, in IndexedDB, what the node needs to come back after a reload as the same
 * node: its identity, its Fleet signing key and Flower node id, its state files and caches, its
 * settings and the CSV the user picked. On start it re-activates that node id (deactivating the
 * previous page's session first: the SuperLink still counts it online), so messages the server
 * addressed to it while the page reloaded are still pulled, and the core restores its session
 * of the run from the state file.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import {
  ColaNode, FLEET_ROUTES, FleetClient, GraphCache, message as schema, nodeAuthHeaders, PROTOBUF_MEDIA_TYPE,
  RUNTIME_VERSION_HEADERS, SuperNode, TaskFileCache, TaskTokenizer, webCryptoProvider, DEFAULT_OBJECT_LIMITS,
  type FleetClientOptions, type NodeAuthKey, type NodeConfig, type SuperNodeExit, type Transport,
} from "@cola-fed/core";
import { ConfirmingKnownServers, type ConfirmServer } from "./confirm.js";
import {
  IndexedDbContentStore, IndexedDbNodeStore, knownServersStorage, loadFleetKey, loadIdentity, wasmSessionFactory,
} from "./environment.js";
import type { NodeDatabase } from "./idb.js";
import { fetchTransport, retrying } from "./transport.js";

/** What the user chose when joining (kept in IndexedDB, so a reload resumes). */
export interface NodeSettings {
  partitionId: number;
  numPartitions: number;
  /** the picked CSV's file name (the node config's `data-path`, for messages) */
  dataName: string;
  /** a fingerprint to pin (node config `server-key-fingerprint`); empty: confirm on first use */
  serverFingerprint: string;
}

/** How the node tells the page what happens. */
export interface NodeEvents {
  /** every progress line (the core's and the SuperNode's) */
  log(line: string): void;
  /** the Flower node id the SuperLink gave this node */
  activated(nodeId: bigint): void;
  /** ask the user to confirm a new server's fingerprint */
  confirmServer: ConfirmServer;
}

/** A started node: stop it (leave the federation), or have the page reload at the next idle point. */
export interface RunningNode {
  /** resolves when the SuperNode loop ends */
  readonly exit: Promise<SuperNodeExit>;
  /** Leave: finish the message in hand, deactivate and unregister the node, forget its Fleet key. */
  leave(): Promise<SuperNodeExit>;
  /** Call `action` (e.g. `location.reload`) the next time the node is between messages. */
  whenIdle(action: () => void): void;
}

const SETTINGS = "node-settings";
const DATA = "data.csv";
const NODE_ID = "flower-node";

/** The saved settings and CSV, if the user joined and has not left since. */
export async function savedSettings(db: NodeDatabase): Promise<{ settings: NodeSettings; csv: string } | undefined> {
  const settings = await db.get<NodeSettings>("settings", SETTINGS);
  const csv = await db.get<string>("settings", DATA);
  return settings === undefined || csv === undefined ? undefined : { settings, csv };
}

/** Remember what the user chose (a reload then resumes without asking again). */
export async function saveSettings(db: NodeDatabase, settings: NodeSettings, csv: string): Promise<void> {
  await db.put("settings", DATA, csv);
  await db.put("settings", SETTINGS, settings);
}

/** Start the node (see the module comment). */
export async function startBrowserNode(db: NodeDatabase, settings: NodeSettings, csv: string, events: NodeEvents,
  options: { wasmBase: string; baseUrl?: string }): Promise<RunningNode> {
  const log = events.log;
  const crypto = webCryptoProvider();
  const nodeConfig: NodeConfig = {
    "partition-id": BigInt(settings.partitionId),
    "num-partitions": BigInt(settings.numPartitions),
    "data-path": settings.dataName,
    ...(settings.serverFingerprint ? { "server-key-fingerprint": settings.serverFingerprint } : {}),
  };
  const identity = await loadIdentity(db, log);
  const node = new ColaNode({
    crypto,
    nodeConfig,
    store: await IndexedDbNodeStore.open(db),
    identity: async () => identity,
    knownServers: new ConfirmingKnownServers(knownServersStorage(db), events.confirmServer, {
      crypto,
      forgetHint: "clear this site's data in the browser to forget {name}",
      onFirstUse: (name, fp) => log(`trusting server ${name} (${fp}): confirmed by the user`),
    }),
    graphCache: new GraphCache(new IndexedDbContentStore(db, "graphs")),
    // the core's default tokenizer check (a JSON object with a model); the tokenizer loads it again when used
    // a tokenizer is checked by loading it with the tokenizer library the node uses
    fileCache: new TaskFileCache(new IndexedDbContentStore(db, "files"), (_name, data) => void new TaskTokenizer(data)),
    sessionFactory: wasmSessionFactory(options.wasmBase),
    readData: async () => csv,
    log,
  });

  const stopController = new AbortController();
  const idle = new IdleGate();
  const maxResponseBytes = DEFAULT_OBJECT_LIMITS.maxObjectBytes + 2 ** 20;
  const raw = fetchTransport({ maxResponseBytes, ...(options.baseUrl !== undefined ? { baseUrl: options.baseUrl } : {}) });
  const connect = async (key: NodeAuthKey, selfRegister: boolean): Promise<{ supernode: SuperNode; client: FleetClient }> => {
    const clientOptions: FleetClientOptions = {
      transport: idle.gate(retrying(raw, { key, signal: stopController.signal, log })), key, maxResponseBytes,
    };
    const client = new RememberingFleetClient(clientOptions, async (nodeId) => {
      await db.put("settings", NODE_ID, { nodeId, publicKeyPem: key.publicKeyPem });
      events.activated(nodeId);
    });
    if (selfRegister) await client.registerNode();
    const supernode = new SuperNode({
      client, nodeConfig, selfRegister: false, stopController, log,
      handler: async (message, context) => node.handle(message, context.nodeId),
    });
    return { supernode, client };
  };

  let key = await loadFleetKey(db);
  const previous = await db.get<{ nodeId: bigint; publicKeyPem: string }>("settings", NODE_ID);
  let current: { supernode: SuperNode; client: FleetClient };
  if (previous !== undefined && previous.publicKeyPem === key.publicKeyPem) {
    log(`resuming as Flower node ${previous.nodeId}`);
    await deactivateStale(raw, key, previous.nodeId, log);
    current = await connect(key, false);
  } else {
    current = await connect(key, true);
  }
  const run = async (): Promise<SuperNodeExit> => {
    let exit = await current.supernode.run();
    if (exit.code !== 0 && previous !== undefined && current.client.nodeId === undefined) {
      log("the SuperLink no longer knows this node's key (a new SuperLink?): joining with a new one");
      key = await loadFleetKey(db, true);
      await db.delete("settings", NODE_ID);
      current = await connect(key, true);
      exit = await current.supernode.run();
    }
    return exit;
  };
  const exit = run();
  return {
    exit,
    async leave() {
      current.supernode.stop("the user left the federation");
      const result = await exit;
      try {
        await current.client.unregister();
        log(`Unregistered node ${current.client.nodeId}`);
      } catch (err) {
        log(`Could not unregister: ${err instanceof Error ? err.message : String(err)}`);
      }
      await db.delete("settings", NODE_ID);
      await db.delete("settings", SETTINGS);
      await db.delete("keys", "fleet-ecdsa-p384");
      return result;
    },
    whenIdle: (action) => idle.request(action),
  };
}

/** A FleetClient that reports the node id it is activated with (kept in IndexedDB). */
class RememberingFleetClient extends FleetClient {
  constructor(options: FleetClientOptions, private readonly onActivated: (nodeId: bigint) => Promise<void>) {
    super(options);
  }

  override async activateNode(heartbeatInterval?: number): Promise<bigint> {
    const nodeId = await super.activateNode(heartbeatInterval);
    await this.onActivated(nodeId);
    return nodeId;
  }
}

/**
 * DeactivateNode for the node id the previous page had: the SuperLink still counts it online
 * until its heartbeats are missed, and refuses to activate an online node. A failure is only
 * logged (the node may be offline already).
 */
async function deactivateStale(transport: Transport, key: NodeAuthKey, nodeId: bigint, log: (line: string) => void): Promise<void> {
  const request = schema("flwr.proto.DeactivateNodeRequest");
  const body = toBinary(request, create(request, { nodeId } as never));
  const headers = { "content-type": PROTOBUF_MEDIA_TYPE, accept: PROTOBUF_MEDIA_TYPE, ...RUNTIME_VERSION_HEADERS, ...(await nodeAuthHeaders(key)) };
  try {
    const answer = await transport(FLEET_ROUTES.deactivateNode, body, headers);
    log(answer.status === 200 ? `deactivated the previous page's session of node ${nodeId}`
      : `the previous session of node ${nodeId} was not deactivated (HTTP ${answer.status})`);
  } catch (err) {
    log(`could not deactivate the previous session of node ${nodeId}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Holds back the next PullMessages while an action (a reload) waits for the node to be idle. */
class IdleGate {
  private pending: (() => void) | undefined;

  request(action: () => void): void {
    this.pending = action;
  }

  gate(inner: Transport): Transport {
    return async (path, body, headers) => {
      if (path === FLEET_ROUTES.pullMessages && this.pending !== undefined) {
        const action = this.pending;
        this.pending = undefined;
        action();
        return new Promise(() => {}); // the page goes away; this pull is never sent
      }
      return inner(path, body, headers);
    };
  }
}
