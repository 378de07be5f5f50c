"""Edge clients: ONNX Runtime vs PyTorch eager per train step, and a client round's peak memory.

Steps: MiniLM-L6 shapes, d_in = d_out = 384, 2,048 rows (32 reviews x 64 tokens), Low Rank r = 8,
Linear, MLP hidden 128; AdamW and SGD with momentum; both on one thread, interleaved and
repeated, medians. PyTorch eager is the ``GradientLearner`` step (closed-form VJP + functional
optimizer).

Memory: peak RSS of a node process for whole rounds of the demo run (MiniLM-L6, Rotten
Tomatoes, 32 reviews x 48 tokens, Low Rank r = 8 on query/value + the head's Linear adapter):
the real ClientApp handlers on the ONNX backend in a process where torch cannot be imported
(``cola_fed.federation.node_process``), fed by the real strategy; against a FedAvg-LoRA client,
which holds the base model and takes one PEFT LoRA step on the same batch size. The node with
its own data is measured under each ``--wire FORM[:DTYPE]`` (default: rows and auto in float32,
rows in float16, or the one that ``--set wire.form=...`` names); ``--set KEY=VALUE`` overrides
the run config of every set-up (``--wire`` wins for the own-data node);
``--process-per-message`` also runs each of them with a fresh node process per message, as
Flower's ClientApp processes do.

    python -m benchmarks.edge [--repeats 30] [--rounds 2] [--memory-only]
        [--wire rows --wire auto:float16 ...] [--set 'optimizer.lr=0.01' ...]
        [--process-per-message] [--no-partition]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the memory run")
    parser.add_argument("--memory-only", action="store_true", help="skip the step timings")
    parser.add_argument("--wire", action="append", metavar="FORM[:DTYPE]",
                        help="wire.form (and wire.dtype, default float32) of an own-data node "
                             f"to measure; repeatable (default: {' '.join(DEFAULT_WIRES)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="overrides", help="a run-config override for every set-up, "
                                               "VALUE in TOML (a bare word is a string)")
    parser.add_argument("--process-per-message", action="store_true",
                        help="also measure each --wire node with a fresh process per message")
    parser.add_argument("--no-partition", action="store_true",
                        help="skip the simulated-partition node (flwr-datasets)")
    parser.add_argument("--fedavg-lora-client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fedavg_lora_client:  # the child process of the memory comparison
        fedavg_lora_client_step()
        return
    overrides = dict(parse_override(text) for text in args.overrides)
    args.wire = args.wire or default_wires(overrides)
    wires = [parse_wire(text) for text in args.wire]

    import torch

    from benchmarks.common import RESULTS, interleaved_medians, write_result
    from cola_fed import AdaptationData, AdapterSpec, GradientLearner, OptimizerSpec
    from cola_fed.edge.export import export_train_step
    from cola_fed.edge.graphs import GraphKey
    from cola_fed.edge.ort_learner import OrtLearner
    from cola_fed.gl.layout import LayerInfo, Layout

    torch.set_num_threads(1)
    layout = Layout((LayerInfo("q", 384, 384),))
    rng = np.random.default_rng(0)
    data = AdaptationData({"q": rng.standard_normal((args.rows, 384)).astype(np.float32)},
                          {"q": (rng.standard_normal((args.rows, 384)) * 1e-3).astype(np.float32)},
                          {"q": "q"})
    specs = {"lowrank": AdapterSpec(kind="lowrank", rank=8), "linear": AdapterSpec(kind="linear"),
             "mlp": AdapterSpec(kind="mlp", hidden=128, depth=1)}
    optimizers = {"adamw": OptimizerSpec(name="adamw", lr=1e-4),
                  "sgd": OptimizerSpec(name="sgd", lr=1e-3, momentum=0.9)}
    results = {}
    if args.memory_only:  # keep the step timings of the last full run
        previous = RESULTS / "edge.json"
        results = json.loads(previous.read_text())["steps"] if previous.exists() else {}
    for kind, spec in ({} if args.memory_only else specs).items():
        for opt_name, optimizer in optimizers.items():
            key = GraphKey(spec, 384, 384, optimizer.name, optimizer.nesterov)
            eager = GradientLearner(layout, spec, optimizer=optimizer, seed=0)
            state = {n: {p: v.numpy() for p, v in ps.items()}
                     for n, ps in eager.adapter_state().items()}
            edge = OrtLearner(layout, spec, optimizer, {key.name: export_train_step(key)},
                              initial_state=state)
            times = interleaved_medians({"ort": lambda e=edge: e.fit(data),
                                         "torch-eager": lambda g=eager: g.fit(data)},
                                        args.repeats, warmup=3)
            speedup = times["torch-eager"]["median_s"] / times["ort"]["median_s"]
            results[f"{kind}-{opt_name}"] = {"times": times, "ort_speedup_over_eager": speedup}
            print(f"{kind:8s} {opt_name:5s} ort {times['ort']['median_s'] * 1e3:7.2f} ms  "
                  f"eager {times['torch-eager']['median_s'] * 1e3:7.2f} ms  "
                  f"speedup {speedup:.2f}x", file=sys.stderr, flush=True)
    memory = client_round_memory(args.rounds, wires, overrides,
                                 per_message=args.process_per_message,
                                 partition=not args.no_partition)
    path = write_result("edge", {"config": vars(args) | {"threads": 1}, "steps": results,
                                 "client_round_memory": memory})
    print(f"wrote {path}", file=sys.stderr)


#: the own-data node's wire settings measured by default: FORM[:DTYPE]
DEFAULT_WIRES = ("rows", "rows:float16", "auto")
_SHORT_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def default_wires(overrides: dict) -> list[str]:
    """The own-data node's wire settings when no ``--wire`` names them: the one that
    ``--set wire.form=...`` / ``wire.dtype=...`` choose (the run config's defaults for the
    other), else :data:`DEFAULT_WIRES`."""
    from cola_fed.config import WireConfig

    if not {"wire.form", "wire.dtype"} & set(overrides):
        return list(DEFAULT_WIRES)
    default = WireConfig()
    return [f"{overrides.get('wire.form', default.form)}:"
            f"{overrides.get('wire.dtype', default.dtype)}"]


def parse_wire(text: str) -> tuple[str, str]:
    """``FORM[:DTYPE]`` -> ``(wire.form, wire.dtype)``; the dtype defaults to float32. Both are
    checked as the run config checks them."""
    from cola_fed.config import WireConfig

    form, _, dtype = text.partition(":")
    wire = WireConfig(dtype=dtype or "float32", form=form)
    return wire.form, wire.dtype


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(key, value)``, the value read as TOML (``0.01``, ``true``,
    ``"auto"``), a bare word that is not TOML as a string (``auto``)."""
    import tomllib

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SystemExit(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value.strip()


def client_round_memory(rounds: int, wires: list[tuple[str, str]], overrides: dict,
                        *, per_message: bool = False, partition: bool = True) -> dict:
    """Peak RSS (MB) of an ONNX-backend node process over hello + ``rounds`` rounds of the demo
    run, of the same process's imports alone, and of a FedAvg-LoRA client step.

    Node set-ups: ``own-data-<form>-<dtype>``, an edge device with its own reviews
    (``data-path``, 800 of them), under each of ``wires``; with ``per_message``, the same again
    with a fresh node process for every message (``-per-message``: Flower runs a ClientApp
    process per message, which imports, loads ONNX Runtime and tokenises its data every
    round); and ``partition``, a simulated node that cuts its share of the corpus with
    flwr-datasets (which imports Hugging Face ``datasets`` and pyarrow), in the run's default
    wire settings. ``overrides`` go into every set-up's run config."""
    import csv
    import subprocess
    import tempfile
    from pathlib import Path

    from cola_fed.config import RunConfig
    from cola_fed.tasks.text_classification import load_rotten_tomatoes

    imports = subprocess.run(
        [sys.executable, "-c", "import sys\n"
         "from cola_fed.federation.node_process import WithoutTorch, peak_rss_mb\n"
         "sys.meta_path[:] = [WithoutTorch(f) for f in sys.meta_path]\n"
         "import cola_fed.federation.client, cola_fed.edge.ort_learner, onnxruntime\n"
         "import cola_fed.tasks.text_classification, tokenizers\n"
         "print(peak_rss_mb())"],
        capture_output=True, text=True, check=True)
    result: dict = {"onnx_node_imports_peak_rss_mb": float(imports.stdout.strip()),
                    "overrides": overrides, "setups": {}}
    with tempfile.TemporaryDirectory() as folder:
        reviews = load_rotten_tomatoes()
        path = Path(folder) / "my-reviews.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(zip(reviews.texts[:800], reviews.labels[:800]))
        own = {"data-path": str(path)}
        setups: dict[str, tuple[dict, dict, bool]] = {}
        for form, dtype in wires:
            name = f"own-data-{form}-{_SHORT_DTYPES[dtype]}"
            wire = {"wire.form": form, "wire.dtype": dtype}
            setups[name] = (own, wire, False)
            if per_message:
                setups[f"{name}-per-message"] = (own, wire, True)
        if partition:
            setups["partition"] = ({"num-partitions": 4}, {}, False)
        for setup, (node_config, wire, fresh) in setups.items():
            config = {**overrides, **wire}
            stats = _node_round_stats(rounds, node_config, config, Path(folder) / setup,
                                      per_message=fresh)
            run_wire = RunConfig.from_flat(config).wire
            result["setups"][setup] = {
                "wire_form": run_wire.form, "wire_dtype": run_wire.dtype,
                "process_per_message": fresh,
                "after_hello_peak_rss_mb": stats[0]["peak_rss_mb"],
                "round_peak_rss_mb": max(s["peak_rss_mb"] for s in stats),
                "held_rss_mb": [s["held_rss_mb"] for s in stats],
                "round_message_mb": [s["message_bytes"] / 1e6 for s in stats[1:]],
                "round_seconds": [s["seconds"] for s in stats[1:]]}
            print(f"{setup:32s} hello {stats[0]['peak_rss_mb']:6.1f} MB  round "
                  f"{result['setups'][setup]['round_peak_rss_mb']:6.1f} MB  message "
                  f"{max(result['setups'][setup]['round_message_mb']):5.1f} MB",
                  file=sys.stderr, flush=True)
    lora = subprocess.run([sys.executable, "-m", "benchmarks.edge", "--fedavg-lora-client"],
                          capture_output=True, text=True, check=True)
    result["fedavg_lora_client_peak_rss_mb"] = float(lora.stdout.strip().splitlines()[-1])
    result["target_mb"] = 150
    for row in result["setups"].values():
        row["ratio_to_fedavg_lora"] = (row["round_peak_rss_mb"]
                                       / result["fedavg_lora_client_peak_rss_mb"])
        row["meets_target"] = row["round_peak_rss_mb"] <= result["target_mb"]
    print(json.dumps(result, indent=2), file=sys.stderr)
    return result


class _ProcessPerMessage:
    """A node whose every message runs in a fresh node process (torch hidden), as a Flower
    SuperNode runs a ClientApp process per message: what it keeps between messages is its
    ``Context``, as there."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.stats: list[dict] = []

    def handle(self, msg, context):
        from cola_fed.federation.local_grid import NodeProcess

        node = NodeProcess(without_torch=True, env=self.env)
        try:
            reply, context = node.handle(msg, context)
        finally:
            node.close()
        self.stats.extend(node.stats)
        return reply, context

    def close(self) -> None:
        """Nothing runs between messages."""


def _node_round_stats(rounds: int, node_config: dict, overrides: dict, cache: object, *,
                      per_message: bool = False) -> list[dict]:
    """Per-message stats of one ONNX node (torch hidden) in the demo run, driven by the real
    strategy through a LocalGrid."""
    import os

    from cola_fed.config import RunConfig
    from cola_fed.federation.local_grid import LocalGrid, NodeProcess
    from cola_fed.federation.server import build_strategy

    config = RunConfig.from_flat({"num-server-rounds": rounds, "task.batch-size": 32,
                                  "task.max-length": 48, "task.eval-batches": 4,
                                  "optimizer.lr": 0.004, "strategy.min-available-nodes": 1,
                                  "strategy.evaluate-every": rounds, **overrides})
    strategy = build_strategy(config)
    env = {**os.environ, "COLA_FED_CACHE": str(cache)}
    node = (_ProcessPerMessage(env) if per_message
            else NodeProcess(without_torch=True, env=env))
    try:
        grid = LocalGrid(1, processes={1000: node}, keep_delivered=False)
        grid.contexts[1000].node_config.update(node_config)
        strategy.start(grid, num_rounds=rounds, timeout=600)
    finally:
        node.close()
    session = strategy.sessions[1000]
    assert session.backend == "onnx" and session.rounds_trained == rounds
    assert not any(s["torch_imported"] for s in node.stats)
    return node.stats


def fedavg_lora_client_step() -> None:
    """One FedAvg-LoRA client step (base model held locally) on a 32 x 48 review batch; prints
    this process's peak RSS in MB."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cola_fed.config import TaskConfig
    from cola_fed.tasks import get_task

    task = get_task(TaskConfig(batch_size=32, max_length=48, eval_batches=4))
    data = task.client_data(0, 4)
    batch = {k: torch.as_tensor(v[:32]) for k, v in data.train.items()}
    model = get_peft_model(task.build_model(), LoraConfig(r=8, lora_alpha=8,
                                                          target_modules=["query", "value"],
                                                          modules_to_save=["classifier"]))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=4e-3)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    from cola_fed.federation.node_process import peak_rss_mb

    print(peak_rss_mb())


if __name__ == "__main__":
    main()
