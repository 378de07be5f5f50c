/**
 * The cola-fed app of the Node.js node: the core's {@link ColaNode} with the Node.js
 * environment (state directory, known servers, caches on disk, onnxruntime-node on the CPU).
 */
import { join } from "node:path";
import {
  checkNodeConfig, ColaNode, ConfigError, GraphCache, KnownServers, optionalString, TaskFileCache, TaskTokenizer, webCryptoProvider, type NodeConfig,
} from "@cola-fed/core";
import {
  colaFedHome, cpuSessionFactory, defaultCacheDir, expandUser, FolderBlobs, knownServersFile, loadIdentity, nodeStore,
  onnxThreads, readDataFile,
} from "./environment.js";
import type { AppHandler } from "./supernode.js";

/** Options of {@link createColaApp}: the node's `--node-config` and a progress-line sink. */
export interface ColaAppOptions {
  nodeConfig: NodeConfig;
  log: (line: string) => void;
}

/** The cola-fed app handler for this node. */
export async function createColaApp(options: ColaAppOptions): Promise<AppHandler> {
  const { nodeConfig, log } = options;
  // refused here rather than at the first hello (after the key check, so that a misspelt
  // 'data-path' is named as such): this node has no simulated partition to fall back on
  checkNodeConfig(nodeConfig);
  if (optionalString(nodeConfig, "data-path") === undefined) {
    throw new ConfigError("node config lacks 'data-path': a JavaScript node trains on its own data file "
      + "(a CSV with a label column), never on a simulated partition");
  }
  const crypto = webCryptoProvider();
  const stateDir = optionalString(nodeConfig, "state-dir");
  const folder = stateDir === undefined ? undefined : expandUser(stateDir);
  const { identity, seed } = await loadIdentity(crypto, folder, log);
  const cacheRoot = optionalString(nodeConfig, "graph-cache");
  const graphs = new FolderBlobs(cacheRoot === undefined ? defaultCacheDir("graphs") : expandUser(cacheRoot), ".onnx");
  // task files live beside the graphs when graph-cache moves those, as the Python node keeps
  // them (`client.py` `_file_cache`): one graph-cache folder serves either node
  const files = new FolderBlobs(cacheRoot === undefined ? defaultCacheDir("files") : expandUser(cacheRoot), "");
  const knownPath = optionalString(nodeConfig, "known-servers") ?? join(colaFedHome(), "known-servers.json");
  const node = new ColaNode({
    crypto,
    nodeConfig,
    store: nodeStore(folder, seed),
    identity: async () => identity,
    knownServers: new KnownServers(knownServersFile(expandUser(knownPath)), {
      crypto,
      onFirstUse: (name, fingerprint, location) => log(`WARNING: trusting server ${name} on first use: `
        + `${fingerprint} (remembered in ${location}; pin it with server-key-fingerprint)`),
    }),
    graphCache: new GraphCache(graphs),
    // a tokenizer is checked by loading it with the tokenizer library the node uses
    fileCache: new TaskFileCache(files, (_name, data) => void new TaskTokenizer(data)),
    sessionFactory: cpuSessionFactory(onnxThreads(nodeConfig)),
    readData: readDataFile,
    log,
  });
  return async (message, context) => node.handle(message, context.nodeId);
}
