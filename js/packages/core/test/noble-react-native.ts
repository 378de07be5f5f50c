/**
 * How a React Native app plugs the core in (docs/edge.md, "React Native and other runtimes
 * without WebCrypto"): compiled with the tests against the core's real exports so the sketch
 * cannot rot, and exercised by noble.test.ts under Node with onnxruntime-node in the place of
 * onnxruntime-react-native. An app imports from "@cola-fed/core" instead of "../src/index.js".
 */
import type { InferenceSession } from "onnxruntime-common";
import {
  base64Decode, base64Encode, ColaNode, DEFAULT_OBJECT_LIMITS, FleetClient, GraphCache, KnownServers, nobleCryptoProvider,
  generateNodeAuthKey, setDefaultCryptoProvider, SuperNode, TaskFileCache,
  type ContentStore, type CryptoProvider, type NodeConfig, type NodeStore, type Transport,
} from "../src/index.js";

/** A string store the app has: `expo-secure-store` or `react-native-keychain` for secrets,
 * `@react-native-async-storage/async-storage` or a folder (`expo-file-system`) for the rest. */
export interface AppStorage {
  getItem(key: string): Promise<string | null>;
  setItem(key: string, value: string): Promise<void>;
  removeItem(key: string): Promise<void>;
}

/** onnxruntime-react-native's `InferenceSession.create` (the same API as onnxruntime-common's). */
export type CreateSession = (model: Uint8Array, options?: InferenceSession.SessionOptions) => Promise<InferenceSession>;

/** 32 random bytes kept in the secure store under `key`, made on first use. */
export async function secret(secure: AppStorage, key: string, crypto: CryptoProvider): Promise<Uint8Array> {
  const saved = await secure.getItem(key);
  if (saved !== null) return base64Decode(saved);
  const fresh = crypto.randomBytes(32);
  await secure.setItem(key, base64Encode(fresh));
  return fresh;
}

/** The node's state files in the app's storage, each behind an HMAC whose key lives in the
 * secure store (the files themselves can be large: the learner's bytes). */
export class AppNodeStore implements NodeStore {
  private constructor(private readonly files: AppStorage, private readonly key: Uint8Array, private readonly crypto: CryptoProvider) {}

  /** The store, its HMAC key made on first use. */
  static async open(files: AppStorage, secure: AppStorage, crypto: CryptoProvider): Promise<AppNodeStore> {
    return new AppNodeStore(files, await secret(secure, "cola-fed.state-mac-key", crypto), crypto);
  }

  private async names(): Promise<string[]> {
    return JSON.parse((await this.files.getItem("cola-fed.state-index")) ?? "[]") as string[];
  }

  async save(name: string, data: Uint8Array): Promise<void> {
    await this.files.setItem(`cola-fed.state.${name}`, base64Encode(data)); // a whole value: old or new, never half
    await this.files.setItem("cola-fed.state-index", JSON.stringify([name, ...(await this.names()).filter((n) => n !== name)]));
  }

  async load(name: string): Promise<Uint8Array | null> {
    const saved = await this.files.getItem(`cola-fed.state.${name}`);
    return saved === null ? null : base64Decode(saved);
  }

  list(): Promise<string[]> {
    return this.names();
  }

  async setAside(name: string): Promise<void> {
    const saved = await this.files.getItem(`cola-fed.state.${name}`);
    if (saved !== null) await this.files.setItem(`cola-fed.aside.${name}`, saved);
    await this.files.removeItem(`cola-fed.state.${name}`);
    await this.files.setItem("cola-fed.state-index", JSON.stringify((await this.names()).filter((n) => n !== name)));
  }

  mac(data: Uint8Array): Promise<Uint8Array> {
    return this.crypto.hmacSha256(this.key, data);
  }
}

/** Verified graphs and task files by SHA-256, in the app's storage. */
export function appContentStore(files: AppStorage, prefix: string): ContentStore {
  return {
    read: async (hash) => {
      const saved = await files.getItem(`${prefix}.${hash}`);
      return saved === null ? null : base64Decode(saved);
    },
    write: (hash, data) => files.setItem(`${prefix}.${hash}`, base64Encode(data)),
    remove: (hash) => files.removeItem(`${prefix}.${hash}`),
  };
}

/** The Fleet API over the platform's `fetch` (React Native's is native: no CORS, so the app
 * calls the SuperLink itself, over https). Add retries as packages/browser/src/transport.ts does. */
export function fetchFleetTransport(superlink: string, fetchFn: typeof fetch = fetch): Transport {
  return async (path, body, headers) => {
    const response = await fetchFn(new URL(path, superlink).href, { method: "POST", body: new Uint8Array(body), headers });
    return { status: response.status, body: new Uint8Array(await response.arrayBuffer()) };
  };
}

/** What the app hands in. */
export interface ReactNativeNodeOptions {
  superlink: string;
  nodeConfig: NodeConfig;
  /** the node's own data (node config `data-path` names it in messages) */
  csv: string;
  secure: AppStorage;
  files: AppStorage;
  createSession: CreateSession;
  fetch?: typeof fetch;
  log?: (line: string) => void;
}

/** A cola-fed node on React Native, ready to `run()` (and `stop()` when the user leaves). */
export async function createReactNativeNode(options: ReactNativeNodeOptions): Promise<{ node: ColaNode; supernode: SuperNode }> {
  const crypto = nobleCryptoProvider(); // after `import "react-native-get-random-values"` in the app's entry
  setDefaultCryptoProvider(crypto); // content hashes, object ids, node auth: no crypto.subtle anywhere
  const log = options.log ?? (() => {});
  const identity = await crypto.ed25519FromSeed(await secret(options.secure, "cola-fed.identity-seed", crypto));
  const node = new ColaNode({
    crypto,
    nodeConfig: options.nodeConfig,
    store: await AppNodeStore.open(options.files, options.secure, crypto),
    identity: async () => identity,
    knownServers: new KnownServers({
      location: "the app's known servers",
      read: async () => {
        const saved = await options.secure.getItem("cola-fed.known-servers");
        return saved === null ? null : base64Decode(saved);
      },
      write: (data) => options.secure.setItem("cola-fed.known-servers", base64Encode(data)),
    }, { crypto, forgetHint: "clear the app's data to forget {name}" }),
    graphCache: new GraphCache(appContentStore(options.files, "cola-fed.graph")),
    fileCache: new TaskFileCache(appContentStore(options.files, "cola-fed.file")),
    sessionFactory: (model) => options.createSession(model, { executionProviders: ["cpu"] }),
    readData: async () => options.csv,
    log,
  });
  const key = await generateNodeAuthKey("P-384", crypto); // a fresh Flower key per start, as flower-supernode makes
  const client = new FleetClient({
    transport: fetchFleetTransport(options.superlink, options.fetch), key,
    maxResponseBytes: DEFAULT_OBJECT_LIMITS.maxObjectBytes + 2 ** 20,
  });
  const supernode = new SuperNode({
    client, nodeConfig: options.nodeConfig, selfRegister: true, log,
    handler: (message, context) => node.handle(message, context.nodeId),
  });
  return { node, supernode };
}
