"""The trust boundary under attack: hostile nodes, a hostile relay and fuzzed protocol messages
against the real strategy and client over LocalGrid, counted per class of attack.

For every class: ``cases`` (hostile messages sent), ``refused`` (refused with a named error, for
that node and message alone), ``accepted`` (hostile content the run took in), ``escaped`` (an
error outside the protocol's family), ``aborts`` (runs that ended), ``blamed`` (refusals counted
against an honest node). Federation classes also check that every honest node trained every
round. Checkpoint classes tamper with a finished run's checkpoint and resume it: refused means
refused whole, naming the file, with every result file unchanged. Owners classes run with a
``strategy.partition-owners`` file and Sybil node ids claiming an owned partition (0 honest
nodes denied there). ``col poisoning``: one node of five in ``col`` mode sends adapters at
``strategy.max-adapter-norm``, under each ``strategy.col-aggregate``. They are within the bound,
so they are accepted (like the protocol classes' in-range values, not a failure), and the server
holds them as that node's state, in the shared delta of every later round (the node's own later
rounds fail on its side: it holds other adapters than it sent). What counts is ``held``: the
clean nodes' held-out loss after the last round within 10% of the same run without that node.
The mean is no defence and is expected not to hold; a robust option that does not hold fails the
benchmark. These runs are seeded, so they run once whatever ``--runs``. ``unfolding``: the
server sends an interval of convolution chunks that each fit the node's ``max-payload-mb`` alone
but not together (one byte over it, decoded and unfolded); refused means the node refused the
order naming its per-order cap, took nothing from it, and was not blamed. Targets: 0 accepted, 0
escaped, 0 aborts, 0 blamed. The wire decoders' own classes come from ``benchmarks.fuzz_wire``.

    python -m benchmarks.hostile [--runs 3] [--fuzz 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from benchmarks import fuzz_wire
from benchmarks.common import write_result
from cola_fed import errors
from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError, PayloadError, ProtocolError
from cola_fed.federation.adversary import (
    NODE_HELLO_ATTACKS,
    NODE_TRAIN_ATTACKS,
    RELAY_HELLO_REWRITES,
    adapter_edit,
    hostile_node,
    json_paths,
)
from cola_fed.federation.client import STATE_SESSION
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.node_store import NodeStore
from cola_fed.federation.protocol import (
    HelloClaim,
    HelloTranscript,
    NodeSession,
    TrainOrder,
    TrainReport,
)
from cola_fed.federation.server import build_strategy, run_server
from cola_fed.wire.codec import DecodeBudget
from cola_fed.wire.crypto import fingerprint, public_bytes

DIGITS = {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 2,
          "optimizer.lr": 0.01, "strategy.min-available-nodes": 1,
          "strategy.max-failures": 1000}  # count every refusal; quarantine is tested apart
ROUNDS, HOSTILE, HONEST = 3, 1001, (1000, 1002)


def federation(grid_options: dict, *, victim_config: dict | None = None):
    """A 3-node digits run of ``ROUNDS`` rounds; (strategy, grid, aborted)."""
    strategy = build_strategy(RunConfig.from_flat({**DIGITS, "num-server-rounds": ROUNDS}))
    grid = LocalGrid(3, **grid_options)
    grid.contexts[HOSTILE].node_config.update(victim_config or {})
    try:
        strategy.start(grid, num_rounds=ROUNDS, timeout=3)
    except Exception as err:  # an abort: what this benchmark exists to find
        return strategy, grid, repr(err)
    return strategy, grid, strategy.stopped  # a run that stopped early is an abort too


def honest_ok(strategy) -> bool:
    """Every honest node that joined trained every round (see ``honest-denied`` for those
    refused at hello: a contested partition refuses every claimant, by design)."""
    return all(strategy.sessions[n].rounds_trained == ROUNDS
               for n in HONEST if n in strategy.sessions)


def honest_denied(strategy) -> int:
    return sum(n not in strategy.sessions for n in HONEST)


def node_train_class(rewrite) -> dict[str, int]:
    strategy, _, aborted = federation({"handlers": {HOSTILE: hostile_node(rewrite)}})
    hostile = strategy.sessions.get(HOSTILE)
    accepted = hostile.rounds_trained if hostile else 0
    return {"cases": ROUNDS, "refused": ROUNDS - accepted, "accepted": accepted, "escaped": 0,
            "aborts": int(aborted is not None), "honest-ok": int(honest_ok(strategy)),
            "honest-denied": honest_denied(strategy)}


def node_hello_class(rewrite) -> dict[str, int]:
    strategy, _, aborted = federation({"handlers": {HOSTILE: hostile_node(rewrite, on="hello")}})
    accepted = int(HOSTILE in strategy.sessions)
    return {"cases": 1, "refused": 1 - accepted, "accepted": accepted, "escaped": 0,
            "aborts": int(aborted is not None), "honest-ok": int(honest_ok(strategy)),
            "honest-denied": honest_denied(strategy)}


def relay_hello_class(rewrite, folder) -> dict[str, int]:
    def relay(node, msg):
        return rewrite(msg) if node == HOSTILE and msg.metadata.message_type == "query" else msg

    strategy, grid, aborted = federation({"message_filter": relay}, victim_config={
        "graph-cache": str(folder / "graphs"), "backend": "onnx"})
    accepted = int(STATE_SESSION in grid.contexts[HOSTILE].state)
    return {"cases": 1, "refused": 1 - accepted, "accepted": accepted, "escaped": 0,
            "aborts": int(aborted is not None), "honest-ok": int(honest_ok(strategy)),
            "honest-denied": honest_denied(strategy)}


def relay_late_class() -> dict[str, int]:
    """A relay holds node 1001's authentic TRAIN reply of each round back and delivers it in
    place of the next round's: each late reply is dropped, never applied, never blamed."""
    held: dict[str, Any] = {}

    def late(node, reply):
        if node != HOSTILE or reply.metadata.message_type != "train" or reply.has_error():
            return reply
        earlier, held["reply"] = held.get("reply"), reply.content
        if earlier is None:
            return None
        reply.content = earlier
        return reply

    strategy, _, aborted = federation({"reply_filter": late})
    victim = strategy.sessions.get(HOSTILE)
    accepted = victim.rounds_trained if victim else 0
    return {"cases": ROUNDS - 1, "refused": ROUNDS - 1 - accepted, "accepted": accepted,
            "escaped": 0, "aborts": int(aborted is not None), "honest-ok": int(honest_ok(strategy)),
            "honest-denied": honest_denied(strategy),
            "blamed": victim.failures + int(victim.quarantined) if victim else 1}


def owners_class(*, sybils_first: bool) -> dict[str, int]:
    """Contested partitions with ``strategy.partition-owners``: node ids with identities of
    their own claim partition 0, all at once with its owner (three of them) or first, its owner
    connecting after round 1 (one). Every Sybil is refused; no honest node is denied."""
    folder = Path(tempfile.mkdtemp())
    sybils = [5000] if sybils_first else [5000, 5001, 5002]
    grid = LocalGrid(3)
    honest = list(grid.contexts)
    for node in sybils:
        grid.connect(node, 0, 3)
    prints = {}
    for node, context in grid.contexts.items():
        context.node_config["state-dir"] = str(folder / f"node-{node}")
        prints[node] = fingerprint(public_bytes(NodeStore(folder / f"node-{node}").identity()))
    owners = folder / "partition-owners"
    owners.write_text("".join(f"{i} {prints[n]}\n" for i, n in enumerate(honest)))
    owners.chmod(0o600)
    if sybils_first:
        owner, trained = grid.disconnect(honest[0]), []

        def late(node, msg):
            if msg.metadata.message_type == "train":
                trained.append(node)
                if len(trained) == 2:
                    grid.contexts[honest[0]] = owner
            return msg

        grid.message_filter = late
    strategy = build_strategy(RunConfig.from_flat({**DIGITS, "num-server-rounds": ROUNDS,
                                                   "strategy.partition-owners": str(owners)}))
    try:
        strategy.start(grid, num_rounds=ROUNDS, timeout=3)
        aborted = strategy.stopped
    except Exception as err:
        aborted = repr(err)
    shutil.rmtree(folder, ignore_errors=True)
    accepted = sum(n in strategy.sessions for n in sybils)
    wanted = {n: ROUNDS - (sybils_first and n == honest[0]) for n in honest}
    return {"cases": len(sybils), "refused": len(sybils) - accepted, "accepted": accepted,
            "escaped": 0, "aborts": int(aborted is not None),
            "honest-ok": int(all(n in strategy.sessions and strategy.sessions[n].rounds_trained
                                 == wanted[n] for n in honest)),
            "honest-denied": sum(n not in strategy.sessions for n in honest)}


# --------------------------------------------------------------------------------------------
# col mode: one node of five with adapters at the norm bound (as tests/test_col_robust.py)

COL_RULES = ("mean", "trimmed-mean", "clipped-mean")
COL_BOUND, COL_HOSTILE, COL_ROUNDS = 1000.0, 1004, 8
COL_SETTINGS = {**DIGITS, "edge.graphs": False,
                "num-server-rounds": COL_ROUNDS, "optimizer.lr": 0.05, "task.eval-batches": 4,
                "strategy.mode": "col", "strategy.max-adapter-norm": COL_BOUND}


def at_the_bound(state):
    """Every adapter tensor scaled to just under ``strategy.max-adapter-norm``: accepted."""
    def scaled(v):
        v = v if float(np.linalg.norm(v)) > 0 else np.ones_like(v)
        return (v * np.float32(0.999 * COL_BOUND / float(np.linalg.norm(v)))).astype(np.float32)
    return {layer: {p: scaled(v) for p, v in ps.items()} for layer, ps in state.items()}


def col_run(rule: str, *, hostile: bool):
    """(strategy, aborted, mean held-out loss of the four clean nodes after the last round,
    hostile TRAIN replies sent)."""
    strategy = build_strategy(RunConfig.from_flat({**COL_SETTINGS,
                                                   "strategy.col-aggregate": rule}))
    sent = []

    def count(node, reply):
        if node == COL_HOSTILE and reply.metadata.message_type == "train" and \
                not reply.has_error():
            sent.append(reply)
        return reply

    grid = LocalGrid(5, handlers={COL_HOSTILE: hostile_node(adapter_edit(at_the_bound))},
                     reply_filter=count)
    if not hostile:
        grid.disconnect(COL_HOSTILE)
    try:
        strategy.start(grid, num_rounds=COL_ROUNDS, timeout=3)
        aborted = strategy.stopped
    except Exception as err:
        aborted = repr(err)
    clean = [s for n, s in strategy.sessions.items() if n != COL_HOSTILE]
    loss = statistics.fmean(s.history[-1]["loss"] for s in clean if s.history) if any(
        s.history for s in clean) else math.inf
    return strategy, aborted, loss, len(sent)


def col_poisoning_class(rule: str) -> dict[str, Any]:
    """One hostile node at the bound among five under ``rule``: its adapters are accepted (they
    are within the bound); ``held`` when the clean nodes' loss stays within 10% of the run
    without it."""
    _, clean_aborted, without, _ = col_run(rule, hostile=False)
    strategy, aborted, with_hostile, sent = col_run(rule, hostile=True)
    hostile = strategy.sessions.get(COL_HOSTILE)
    accepted = hostile.rounds_trained if hostile else 0
    clean = [s for n, s in strategy.sessions.items() if n != COL_HOSTILE]
    return {"cases": sent, "refused": sent - accepted, "accepted": accepted,
            "escaped": 0, "aborts": int(aborted is not None) + int(clean_aborted is not None),
            "honest-ok": int(len(clean) == 4 and all(s.rounds_trained == COL_ROUNDS
                                                      for s in clean)),
            "honest-denied": 4 - len(clean),
            "blamed": sum(s.failures + int(s.quarantined) for s in clean),
            "held": int(with_hostile <= 1.1 * without),
            "loss-without": without, "loss-with": with_hostile,
            "loss-ratio": with_hostile / without}


# --------------------------------------------------------------------------------------------
# one TRAIN order's chunks: each within the node's max-payload-mb, not together

UNFOLD = {"task.name": "mnist", "task.batch-size": 4, "task.eval-batches": 1,
          "task.server-test-size": 8, "data.interval": 3, "wire.form": "rows",
          "edge.graphs": False, "strategy.min-available-nodes": 1,
          "strategy.max-failures": 1000}
VICTIM, BYSTANDER = 1000, 1001
_chunk_costs: list[int] = []


def chunk_costs() -> list[int]:
    """What each chunk of one mnist TRAIN order takes decoded and unfolded (one honest round,
    measured once)."""
    if not _chunk_costs:
        spend = DecodeBudget.spend

        def recording(self: DecodeBudget, nbytes: int) -> None:
            spend(self, nbytes)
            _chunk_costs.append(nbytes)

        DecodeBudget.spend = recording
        try:
            build_strategy(RunConfig.from_flat({**UNFOLD, "num-server-rounds": 1})).start(
                LocalGrid(1), num_rounds=1, timeout=30)
        finally:
            DecodeBudget.spend = spend
    return list(_chunk_costs)


def megabytes(nbytes: int) -> float:
    """The ``max-payload-mb`` that is exactly ``nbytes``."""
    mb = nbytes / 1e6
    return mb if int(mb * 1e6) == nbytes else math.nextafter(mb, 1)


def in_family(reason: str) -> bool:
    kind = getattr(errors, reason.split("(", 1)[0].strip(), None)
    return isinstance(kind, type) and issubclass(kind, (ProtocolError, PayloadError))


def unfolding_class() -> dict[str, int]:
    """Node 1000's cap is one byte under what the order's chunks take together, decoded and
    unfolded (each fits it alone, as does the sealed payload); node 1001 has the default cap."""
    costs = chunk_costs()
    cap = sum(costs) - 1
    assert max(costs) < cap  # each chunk fits the cap alone
    reasons: list[str] = []

    def watch(node, reply):
        if node == VICTIM and reply is not None and reply.has_error() and \
                reply.metadata.message_type == "train":
            reasons.append(str(reply.error.reason))
        return reply

    strategy = build_strategy(RunConfig.from_flat({**UNFOLD, "num-server-rounds": ROUNDS}))
    grid = LocalGrid(2, reply_filter=watch)
    grid.contexts[VICTIM].node_config["max-payload-mb"] = megabytes(cap)
    try:
        strategy.start(grid, num_rounds=ROUNDS, timeout=30)
        aborted = strategy.stopped
    except Exception as err:
        aborted = repr(err)
    state = grid.contexts[VICTIM].state
    taken = NodeSession.from_record(state[STATE_SESSION]).last_round \
        if STATE_SESSION in state else 0
    refused = sum("decoded and unfolded" in r and in_family(r) for r in reasons)
    victim, bystander = strategy.sessions.get(VICTIM), strategy.sessions.get(BYSTANDER)
    return {"cases": ROUNDS, "refused": refused, "accepted": taken,
            "escaped": sum(not in_family(r) for r in reasons), "aborts": int(aborted is not None),
            "honest-ok": int(bystander is not None and bystander.rounds_trained == ROUNDS),
            "honest-denied": int(victim is None) + int(bystander is None),
            "blamed": victim.failures + int(victim.quarantined) if victim else 1}


def _state_edit(edit):
    def tamper(folder: Path) -> Path:
        [path] = folder.glob("partition-0-v*.safetensors")
        path.write_bytes(save_tensors(edit(load_tensors(path.read_bytes()))))
        return path
    return tamper


def _round_edit(edit):
    def tamper(folder: Path) -> Path:
        [path] = folder.glob("round-*.json")
        path.write_text(edit(json.loads(path.read_text())))
        return path
    return tamper


def _set(t: dict, key: str, value: float) -> dict:
    return {**t, key: np.full_like(t[key], value)}


def _member(state: dict, key: str, value) -> str:
    state["members"]["0"][key] = value
    return json.dumps(state)


#: name -> tampering of a finished run's checkpoint folder, returning the file it changed
CHECKPOINT_TAMPERING = {
    "nan adapters": _state_edit(lambda t: _set(t, "adapters/fc1/A", np.nan)),
    "adapters beyond the norm bound": _state_edit(lambda t: _set(t, "adapters/fc1/A", 1e30)),
    "pending batches removed": _state_edit(
        lambda t: {k: v for k, v in t.items() if not k.startswith("pending/")}),
    "held-out batches removed": _state_edit(
        lambda t: {k: v for k, v in t.items() if not k.startswith("eval/1/")}),
    "nan in a pending batch": _state_edit(lambda t: _set(t, "pending/0/x", np.nan)),
    "damaged rng state": _round_edit(lambda s: json.dumps({**s, "rng": [3, [1, 2, 3], None]})),
    "record of the wrong types": _round_edit(lambda s: _member(s, "quarantined", "false")),
    "deeply nested round file": _round_edit(lambda s: "[" * 100_000 + "]" * 100_000),
}


def checkpointed_run(out: Path, run_id: int, rounds: int, *, resume: bool = False):
    """A 3-node digits run writing its results and checkpoint to ``out``."""
    grid = LocalGrid(3, run_id=run_id)
    for i, context in enumerate(grid.contexts.values()):
        context.node_config["state-dir"] = str(out / "node-state" / f"partition-{i}")
    return run_server(grid, {**DIGITS, "edge.graphs": False, "num-server-rounds": rounds,
                             "output-dir": str(out), "checkpoint.resume": resume})


def checkpoint_class(tamper, finished: Path) -> dict[str, int]:
    """Resume a copy of ``finished`` after ``tamper``: refused whole, naming the file."""
    out = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(finished, out)
    path = tamper(out / "checkpoint")

    def results() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file() and "node-state" not in p.parts and p.name != ".lock"}

    before = results()
    counts = {"cases": 1, "refused": 0, "accepted": 0, "escaped": 0, "aborts": 0,
              "honest-ok": 1, "honest-denied": 0, "blamed": 0}
    try:
        strategy = checkpointed_run(out, 9, ROUNDS + 1, resume=True)
    except ConfigError as err:  # refused whole: the file named, nothing written
        ok = str(path) in str(err) and results() == before
        counts["refused" if ok else "escaped"] = 1
    except Exception:
        counts["escaped"] = 1
    else:
        counts["accepted"] = 1
        counts["blamed"] = sum(s.failures + s.quarantined for s in strategy.members.values())
        counts["aborts"] = int(strategy.stopped is not None)
    shutil.rmtree(out.parent, ignore_errors=True)
    return counts


def protocol_fuzz(cases: int, seed: int) -> dict[str, dict[str, int]]:
    """Random field rewrites of a real hello transcript and of control messages."""
    strategy = build_strategy(RunConfig.from_flat({**DIGITS, "edge.graphs": False}))
    from cola_fed.wire import public_bytes

    base = json.loads(HelloTranscript(1, 2, 3, public_bytes(strategy.identity), bytes(32),
                                      strategy.plan, lineage=1).encode())
    rng = random.Random(seed)
    junk = [None, True, -1, 2**70, 1e308, "", "x" * 5000, [], {}, [[]], {"a": 1}, "nan", 0.5]
    results = {}
    controls = {"hello claim": (HelloClaim, {"partition-id": 1, "num-examples": 5,
                                             "backend": "torch", "state": 1,
                                             "identity": "ab" * 32, "signature": "cd" * 64,
                                             "held": [1]}),
                "train order": (TrainOrder, {"round": 1, "acknowledged": 1,
                                             "checkpointed": 1}),
                "train report": (TrainReport, {"round": 1, "loss": 1.0, "num-examples": 5,
                                               "grad-norm": 0.1, "step": 1, "state": 2})}
    targets = {"transcript fields": (HelloTranscript, base),
               **{f"{k} fields": v for k, v in controls.items()}}
    for name, (kind, valid) in targets.items():
        counts = {"cases": cases, "refused": 0, "accepted": 0, "escaped": 0}
        paths = list(json_paths(valid))
        for _ in range(cases):
            raw = copy.deepcopy(valid)
            path = rng.choice(paths)
            target = raw
            for key in path[:-1]:
                target = target[key]
            if rng.random() < 0.2 and isinstance(target, dict):
                del target[path[-1]]
            else:
                target[path[-1]] = rng.choice(junk)
            try:
                kind.decode(json.dumps(raw).encode())
                counts["accepted"] += 1  # a valid value of the right type: legitimate
            except (ProtocolError, PayloadError):
                counts["refused"] += 1
            except Exception:
                counts["escaped"] += 1
        results[f"protocol: {name}"] = counts
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="federation runs per class")
    parser.add_argument("--fuzz", type=int, default=2000, help="fuzz cases per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("cola_fed").setLevel(logging.CRITICAL)  # refusals are expected here
    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    plans = [(f"node train: {n}", lambda r=r: node_train_class(r))
             for n, (r, _) in NODE_TRAIN_ATTACKS.items()]
    plans += [(f"node hello: {n}", lambda r=r: node_hello_class(r))
              for n, (r, _) in NODE_HELLO_ATTACKS.items()]
    plans += [(f"relay hello: {n}", lambda r=r: relay_hello_class(r, Path(tempfile.mkdtemp())))
              for n, r in RELAY_HELLO_REWRITES.items()]
    plans += [("relay train: late replies", relay_late_class)]
    plans += [("owners: contested partitions, all at once",
               lambda: owners_class(sybils_first=False)),
              ("owners: contested partitions, sybils first",
               lambda: owners_class(sybils_first=True))]
    plans += [("unfolding: an interval of chunks, each within the cap", unfolding_class)]
    plans += [(f"col poisoning: {rule}", lambda r=rule: col_poisoning_class(r))
              for rule in COL_RULES]
    finished = Path(tempfile.mkdtemp()) / "finished"
    plans += [(f"checkpoint: {n}", lambda t=t: checkpoint_class(t, finished))
              for n, t in CHECKPOINT_TAMPERING.items()]
    for name, one_run in plans:
        if name.startswith("checkpoint") and not finished.exists():
            checkpointed_run(finished, 8, ROUNDS)  # the run whose checkpoint is tampered with
            (finished / "checkpoint" / ".lock").unlink()
        total: dict[str, Any] = {}
        for _ in range(1 if name.startswith("col poisoning") else args.runs):  # seeded
            for key, value in one_run().items():
                total[key] = total.get(key, 0) + value
        results[name] = total
        print(f"{name:45s} {total}", file=sys.stderr, flush=True)
    results.update(protocol_fuzz(args.fuzz, args.seed))
    pool = [{kind: fuzz_wire.take_apart(kind, blob)
             for kind, blob in fuzz_wire.valid_payloads(s).items()} for s in range(8)]
    for name in fuzz_wire.CLASSES:
        results[f"wire: {name}"] = fuzz_wire.run_class(name, args.fuzz, args.seed, pool)
    groups: dict[str, dict[str, int]] = {}
    for name, counts in results.items():
        group = groups.setdefault(name.split(":")[0], {})
        for key in ("cases", "refused", "accepted", "escaped", "aborts", "honest-ok",
                    "honest-denied", "blamed"):
            group[key] = group.get(key, 0) + int(counts.get(key, 0))
    path = write_result("hostile", {"runs": args.runs, "fuzz": args.fuzz, "seed": args.seed,
                                    "seconds": time.perf_counter() - started,
                                    "classes": results, "groups": groups})
    print(f"{'group':14s} {'classes':>7s} {'cases':>7s} {'refused':>8s} {'accepted':>9s} "
          f"{'escaped':>8s} {'aborts':>7s} {'honest denied':>14s} {'blamed':>7s}")
    for group, counts in groups.items():
        classes = sum(1 for n in results if n.split(":")[0] == group)
        print(f"{group:14s} {classes:7d} {counts['cases']:7d} {counts['refused']:8d} "
              f"{counts['accepted']:9d} {counts['escaped']:8d} {counts['aborts']:7d} "
              f"{counts['honest-denied']:14d} {counts['blamed']:7d}")
    for rule in COL_RULES:
        c = results[f"col poisoning: {rule}"]
        print(f"col poisoning, {rule}: clean nodes' loss {c['loss-with']:.4g} with the node at "
              f"the bound, {c['loss-without']:.4g} without (x{c['loss-ratio']:.3g}): "
              + ("held (within 10%)" if c["held"] else "NOT held"
                 + (" (expected: the mean is no defence)" if rule == "mean" else "")))
    print(f"wrote {path}")
    bad = any(c["escaped"] or c.get("aborts") or c.get("blamed") for c in results.values()) or any(
        results[n]["accepted"] for n in results
        if not n.startswith(("wire", "protocol", "col poisoning"))) or not all(
        results[f"col poisoning: {r}"]["held"] for r in COL_RULES if r != "mean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
