/**
 * The cola-fed app of a node without Python: the port of the Python node's message handlers
 * (`cola_fed/federation/client.py` `handle_hello` and `handle_train`).
 *
 * Every message is handled the same way: find the session (in memory, else in the node's
 * store), check and decode everything that came (strictly; a bad message changes nothing),
 * act, seal the reply, save the session, and only then return the reply. The platform (Node.js,
 * a browser) gives the I/O: the store, the caches, the data file, ONNX Runtime sessions.
 */
import type { CryptoProvider, Ed25519Identity } from "../crypto/provider.js";
import { ConfigError, ProtocolError, ReplayError } from "../errors.js";
import type { FlowerMessage } from "../flower/message.js";
import type { RecordDict } from "../flower/records.js";
import type { SessionFactory } from "../learner/sessions.js";
import { OrtLearner } from "../learner/learner.js";
import { clientDataFor, type ClientData } from "../tasks/index.js";
import { toHex } from "../util/bytes.js";
import type { NdArray } from "../tensor.js";
import { DecodeBudget, decodeAdaptation, encodeAdapterState, encodeBatch } from "../wire/codec.js";
import type { KnownServers, KnownServersStorage } from "../wire/identity.js";
import { SecureChannel, ChannelState, signNodeClaim, transcriptHash } from "../wire/seal.js";
import {
  adaptationPart, batchPart, evalPart, expectParts, Hello, HelloClaim, HelloReply, HelloTranscript, KIND_HELLO,
  KIND_TRAIN, NodeCaps, openBundle, PART_ADAPTERS, PART_TRAIN, sealBundle, Sealed, TrainOrder, TrainReport, type Plan,
} from "../protocol/index.js";
import {
  checkHello, checkNotReplayed, graphsNeeded, receiveFiles, receiveGraphs, type ContentCache,
} from "../protocol/hello-check.js";
import { checkNodeConfig, optionalString, partitionOf, type NodeConfig } from "./config.js";
import { MAX_NODE_STATES } from "../protocol/constants.js";
import { TASK_FIELDS } from "../protocol/task-config.js";
import { decodeSession, encodeSession, runFileName, type NodeSession, type NodeStore } from "./session.js";

/** What the platform gives the app. */
export interface ColaNodeEnvironment {
  crypto: CryptoProvider;
  nodeConfig: NodeConfig;
  /** the node's state files (a folder, IndexedDB, or memory when there is no state-dir) */
  store: NodeStore;
  /** the node's long-term Ed25519 identity (created on first use by the platform) */
  identity(): Promise<Ed25519Identity>;
  /** where remembered server keys live (the known-servers file) */
  knownServers: KnownServers | KnownServersStorage;
  /** verified train-step graphs and task files, by name and SHA-256 */
  graphCache: ContentCache;
  fileCache: ContentCache;
  /** makes an ONNX Runtime session from graph bytes */
  sessionFactory: SessionFactory;
  /** the contents of the node's own data file (node config `data-path`) */
  readData(path: string): Promise<string>;
  /** one progress line */
  log(line: string): void;
}

/** A cola-fed node: answers the server's hello and TRAIN messages. */
export class ColaNode {
  readonly #env: ColaNodeEnvironment;
  /** run id -> this node's session in that run (Flower's context.state, per run) */
  readonly #sessions = new Map<bigint, NodeSession>();
  #data: { key: string; data: ClientData } | undefined;

  constructor(env: ColaNodeEnvironment) {
    checkNodeConfig(env.nodeConfig);
    this.#env = env;
  }

  /** The reply content to a message from the server; throws to send an error reply. */
  async handle(message: FlowerMessage, nodeId: bigint): Promise<RecordDict> {
    const content = message.content;
    if (content === undefined) throw new ProtocolError("a message without content");
    const runId = message.metadata.runId;
    switch (message.metadata.messageType) {
      case "query":
        return this.#hello(content, runId, nodeId);
      case "train":
        return this.#train(content, runId, nodeId);
      default:
        throw new ProtocolError(`message type ${JSON.stringify(message.metadata.messageType)}: a cola-fed node `
          + "answers query (hello) and train");
    }
  }

  // ------------------------------------------------------------------------------------------
  // round 0: the hello

  async #hello(content: RecordDict, runId: bigint, nodeId: bigint): Promise<RecordDict> {
    const env = this.#env;
    const caps = NodeCaps.fromNodeConfig(env.nodeConfig);
    const hello = Hello.fromRecord(content);
    const [partitionId, numPartitions] = partitionOf(env.nodeConfig);
    const transcript = await checkHello(hello, {
      crypto: env.crypto, runId, nodeId, caps, partitionId,
      pinned: optionalString(env.nodeConfig, "server-key-fingerprint"),
      federation: optionalString(env.nodeConfig, "federation") ?? "default",
      knownServers: env.knownServers,
    });
    const plan = transcript.plan;
    const prior = await this.#priorSession(runId, transcript, partitionId);
    this.#checkBackend(plan, partitionId);
    const graphHashes = await receiveGraphs(hello, plan, partitionId, env.graphCache);
    await receiveFiles(hello, plan, env.fileCache);

    const nodePrivate = env.crypto.randomBytes(32);
    const key = { privateKey: nodePrivate, publicKey: await env.crypto.x25519PublicKey(nodePrivate) };
    const digest = await transcriptHash(hello.transcript);
    const channel = await SecureChannel.create({
      crypto: env.crypto, privateKey: key.privateKey, peerPublic: transcript.exchangeKey, role: "node", runId, nodeId,
      transcript: digest,
    });
    const learner = await this.#newLearner(plan, partitionId, graphHashes, prior === undefined);
    let states = new Map<number, number>();
    let learners = new Map<number, Uint8Array>();
    let drawn = 0;
    if (prior !== undefined) { // the node held this partition in this run: it goes on from its newest state
      states = new Map(prior.states);
      learners = new Map(prior.learners);
      drawn = prior.states.get(prior.latest)!;
      await learner.loadBytes(learners.get(prior.latest)!);
      env.log(`hello: partition ${partitionId} goes on from its state #${prior.latest}`);
    }
    const number = (prior?.latest ?? 0) + 1;
    const data = await this.#clientData(plan);
    const parts = new Map<string, Uint8Array>([[PART_ADAPTERS, encodeAdapterState(learner.adapterState())]]);
    let batches: Map<string, NdArray>[] = [];
    if (plan.dataMode === "upload") {
      parts.set(PART_TRAIN, encodeBatch(data.train));
    } else {
      batches = draw(data, plan, partitionId, drawn);
      batches.forEach((batch, i) => parts.set(batchPart(i), encodeBatch(batch)));
    }
    data.evalBatches.forEach((batch, i) => parts.set(evalPart(i), encodeBatch(batch)));
    states.set(number, drawn + batches.length);
    learners.set(number, learner.toBytes());
    const keep = new Set(prior === undefined ? [] : [prior.acknowledged, prior.checkpointed]);
    const removable = [...states.keys()].sort((a, b) => a - b).filter((n) => !keep.has(n));
    for (const old of removable.slice(0, Math.max(0, removable.length - (MAX_NODE_STATES - 2)))) {
      states.delete(old); // hello after hello: the newest, and those named
      learners.delete(old);
    }
    const identity = await env.identity();
    const claim = new HelloClaim({
      partitionId, numExamples: data.numExamples, backend: "onnx", state: number,
      identity: toHex(identity.publicKey),
      signature: toHex(await signNodeClaim(identity, digest, key.publicKey)),
      held: [...states.keys()].sort((a, b) => a - b),
    });
    const sealed = bounded(await sealBundle(channel, KIND_HELLO, claim, parts), caps);
    const session: NodeSession = {
      nodeKey: key.privateKey, transcript: hello.transcript, partitionId, backend: "onnx",
      sent: channel.state.sent, received: channel.state.received, lastRound: 0, latest: number,
      acknowledged: prior?.acknowledged ?? number, checkpointed: prior?.checkpointed ?? number, states, learners,
    };
    await this.#save(runId, transcript, session);
    await learner.release();
    env.log(`hello: partition ${partitionId} joins on the onnx backend (${data.numExamples} examples, `
      + `${numPartitions} partitions in the run)`);
    return new HelloReply(key.publicKey, sealed).toRecord();
  }

  /** The session this node held in this run (memory, else its store), if any. A hello that is
   * not newer than the one that session accepted is a replay and resets nothing. */
  async #priorSession(runId: bigint, transcript: HelloTranscript, partitionId: number): Promise<NodeSession | undefined> {
    const session = this.#sessions.get(runId) ?? await this.#loadRun(transcript);
    if (session === undefined) return undefined;
    const previous = HelloTranscript.decode(session.transcript);
    await checkNotReplayed(transcript, partitionId, {
      lastAccepted: async () => ({ ...previous, partitionId: session.partitionId }),
    });
    if (!session.learners.has(session.latest)) throw new ProtocolError("this node's stored session is damaged; rejoin the run");
    return session;
  }

  async #loadRun(transcript: HelloTranscript): Promise<NodeSession | undefined> {
    const name = runFileName(await this.#env.crypto.sha256(transcript.identity), transcript.lineage);
    return this.#readStateFile(name);
  }

  /** A state file's session, or undefined; a file that fails its checks is set aside. */
  async #readStateFile(name: string): Promise<NodeSession | undefined> {
    const data = await this.#env.store.load(name);
    if (data === null) return undefined;
    try {
      return await decodeSession(data, this.#env.store);
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      this.#env.log(`WARNING: state file ${name} refused (${why}); set aside, the node goes on without it`);
      await this.#env.store.setAside(name, why);
      return undefined;
    }
  }

  #checkBackend(plan: Plan, partitionId: number): void {
    const wanted = optionalString(this.#env.nodeConfig, "backend") ?? (plan.backendFor(partitionId) || "auto");
    if (wanted === "torch") {
      throw new ConfigError("this node is set to backend 'torch', but a JavaScript node trains on ONNX Runtime only; "
        + "set backend = 'onnx' (or leave it unset), or use the Python node");
    }
    if (wanted !== "auto" && wanted !== "onnx") {
      throw new ConfigError(`node config backend: expected auto, torch or onnx, got '${wanted}'`);
    }
  }

  /** A learner with the run's seeded initial adapters, or (`seeded` false) an empty one whose
   * state the caller loads at once. */
  async #newLearner(plan: Plan, partitionId: number, graphHashes: Map<string, string>,
    seeded: boolean): Promise<OrtLearner> {
    const graphs = new Map<string, Uint8Array>();
    for (const [name, digest] of graphHashes) graphs.set(name, await this.#env.graphCache.get(name, digest));
    return new OrtLearner(plan.layout, plan.specsFor(partitionId), plan.optimizer, graphs, {
      sessionFactory: this.#env.sessionFactory, seed: seeded ? plan.adapterSeed(partitionId) : null,
      interval: plan.interval,
    });
  }

  async #clientData(plan: Plan): Promise<ClientData> {
    const path = optionalString(this.#env.nodeConfig, "data-path");
    if (path === undefined) {
      throw new ConfigError("node config lacks 'data-path': a JavaScript node trains on its own data file "
        + "(a CSV with a label column), never on a simulated partition");
    }
    // The whole task config and the files' digests, as the Python node's cache key
    // (`_cached_client_data`): a later run with another max-length or tokenizer re-reads the data;
    // the same one reads, tokenizes and checks nothing again.
    const key = JSON.stringify([path, TASK_FIELDS.map(([, , field]) => plan.task[field]), [...plan.files].sort()]);
    if (this.#data?.key === key) return this.#data.data;
    const files = new Map<string, Uint8Array>();
    for (const [name, digest] of plan.files) files.set(name, await this.#env.fileCache.get(name, digest));
    let data: ClientData;
    try {
      data = clientDataFor(plan.task, files, await this.#env.readData(path), { dataName: path });
    } catch (err) {
      // The reply's error travels in the clear and may quote the data: the details stay in
      // this node's log, the server learns only that the data does not fit.
      this.#env.log(`ERROR: this node's data does not fit the run's task: ${err instanceof Error ? err.message : err}`);
      throw new ConfigError("task.data-path: this node's data does not fit the run's task (the node's log says why)");
    }
    this.#data = { key, data };
    return data;
  }

  // ------------------------------------------------------------------------------------------
  // round t: learn, reply with new adapters and the next batches

  async #train(content: RecordDict, runId: bigint, nodeId: bigint): Promise<RecordDict> {
    const env = this.#env;
    const session = this.#sessions.get(runId) ?? await this.#restore(runId, nodeId);
    if (session === undefined) throw new ProtocolError("TRAIN before hello: this node has no session for the run");
    const transcript = HelloTranscript.decode(session.transcript);
    const plan = transcript.plan;
    const caps = NodeCaps.fromNodeConfig(env.nodeConfig);
    const channel = await SecureChannel.create({
      crypto: env.crypto, privateKey: session.nodeKey, peerPublic: transcript.exchangeKey, role: "node", runId, nodeId,
      transcript: await transcriptHash(session.transcript), state: new ChannelState(session.sent, session.received),
    });
    // Open and decode everything before touching the learner: a bad message changes nothing.
    const limits = caps.limits(plan);
    const [order, parts] = await openBundle(channel, Sealed.fromRecord(content).sealed, KIND_TRAIN, TrainOrder, limits);
    if (order.round <= session.lastRound) {
      throw new ReplayError(`a TRAIN order for round ${order.round}, after round ${session.lastRound}: rounds only go forward`);
    }
    if (!session.states.has(order.acknowledged)) {
      throw new ProtocolError(`the server holds this node's state #${order.acknowledged}; this node holds states `
        + `[${[...session.states.keys()].sort((a, b) => a - b).join(", ")}]`);
    }
    const names = Array.from({ length: plan.interval }, (_, i) => adaptationPart(i));
    expectParts(parts, names, "a TRAIN order");
    // one budget for the whole order: what every chunk of the interval takes decoded and
    // unfolded, together, stays within max-payload-mb, checked before anything is unfolded
    const budget = new DecodeBudget(limits.maxBytes);
    const chunks = names.map((name) => decodeAdaptation(parts.get(name)!, { layout: plan.layout, limits, budget }));
    const base = order.acknowledged;
    const drawn = session.states.get(base)!;
    if (base !== session.latest) {
      env.log(`round ${order.round}: the server holds this node's state #${base}, not its latest #${session.latest}; `
        + `going on from #${base}`);
    }
    const learner = await this.#newLearner(plan, session.partitionId, graphsNeeded(plan, session.partitionId), false);
    const baseBytes = session.learners.get(base)!;
    await learner.loadBytes(baseBytes);
    let metrics: Record<string, number> = {};
    for (const chunk of chunks) metrics = await learner.fit(chunk);
    const loss = chunks.reduce((sum, chunk) => sum + chunk.loss, 0) / chunks.length;
    const numExamples = chunks.reduce((sum, chunk) => sum + chunk.numSamples, 0);

    let batches: Map<string, NdArray>[] = [];
    if (plan.dataMode === "stream") batches = draw(await this.#clientData(plan), plan, session.partitionId, drawn);
    const number = session.latest + 1;
    const reply = new Map<string, Uint8Array>([[PART_ADAPTERS, encodeAdapterState(learner.adapterState())]]);
    batches.forEach((batch, i) => reply.set(batchPart(i), encodeBatch(batch)));
    const report = new TrainReport({
      round: order.round, loss, numExamples, gradNorm: metrics.grad_norm ?? 0, step: learner.step, state: number,
    });
    const sealed = bounded(await sealBundle(channel, KIND_TRAIN, report, reply), caps);
    const learners = new Map<number, Uint8Array>([[base, baseBytes], [number, learner.toBytes()]]);
    const states = new Map<number, number>([[base, drawn], [number, drawn + batches.length]]);
    if (session.states.has(order.checkpointed) && !learners.has(order.checkpointed)) {
      // the server's checkpoint holds an older state: kept, for a server that resumes
      states.set(order.checkpointed, session.states.get(order.checkpointed)!);
      learners.set(order.checkpointed, session.learners.get(order.checkpointed)!);
    }
    await learner.release();
    await this.#save(runId, transcript, {
      ...session, sent: channel.state.sent, received: channel.state.received, lastRound: order.round, latest: number,
      acknowledged: base, checkpointed: order.checkpointed, states, learners,
    });
    env.log(`round ${order.round}: trained on ${numExamples} examples, loss ${loss.toFixed(4)}, step ${learner.step}`);
    return new Sealed(sealed).toRecord();
  }

  /** This run's session from the store, if this process lost it (the node restarted and kept
   * its node id): the newest state file of this run and node. */
  async #restore(runId: bigint, nodeId: bigint): Promise<NodeSession | undefined> {
    for (const name of await this.#env.store.list()) {
      const session = await this.#readStateFile(name);
      if (session === undefined) continue;
      const transcript = HelloTranscript.decode(session.transcript);
      if (transcript.runId === runId && transcript.nodeId === nodeId) {
        this.#sessions.set(runId, session);
        this.#env.log(`restored this node's session of run ${runId} from ${name}`);
        return session;
      }
    }
    return undefined;
  }

  /** Keep the session in memory and in the store, before the reply leaves: a node that dies
   * after sending it still holds the state the server may take. */
  async #save(runId: bigint, transcript: HelloTranscript, session: NodeSession): Promise<void> {
    const name = runFileName(await this.#env.crypto.sha256(transcript.identity), transcript.lineage);
    await this.#env.store.save(name, await encodeSession(session, this.#env.store));
    this.#sessions.set(runId, session);
  }
}

/** Batches `start .. start + interval` of this node's endless, seeded batch stream. */
function draw(data: ClientData, plan: Plan, partitionId: number, start: number): Map<string, NdArray>[] {
  const stream = data.batches(plan.task.batchSize, plan.batchSeed(partitionId));
  for (let i = 0; i < start; i++) stream.next();
  return Array.from({ length: plan.interval }, () => stream.next().value);
}

/** A reply no larger than the node's `max-payload-mb`: a plan cannot make a node send more. */
function bounded(sealed: Uint8Array, caps: NodeCaps): Uint8Array {
  if (sealed.length > caps.maxPayloadBytes) {
    throw new ProtocolError(`the reply would be ${(sealed.length / 1e6).toFixed(1)} MB, above this node's `
      + `max-payload-mb = ${caps.maxPayloadMb}; refused`);
  }
  return sealed;
}

