"""The FedAvg-LoRA ClientApp: every node holds the frozen base model and trains LoRA locally.

What: a Flower ``ClientApp`` whose ``train`` handler takes the global LoRA weights from the
message's ArrayRecord, trains ``local-steps`` optimizer steps on the node's own batches, and
replies with its new LoRA weights and a MetricRecord (``num-examples`` for FedAvg's weighting,
the training loss, the step time, the process's peak memory and the bytes of the model the
node holds).

Why it looks like this: it is FlowerTune's pattern (quantisation aside), i.e. what a Flower
user would deploy to fine-tune with LoRA, configured from the same run config as a cola-fed
run so that the two arms can be compared on one task:

- the node's data is cola-fed's partition (``task.client_data(partition-id, num-partitions)``
  from the node config, as Flower's simulation sets it, or the node's own ``data-path``) and
  its batches are ColA's seeded batch stream for that partition, continued from round to round
  (the position lives in ``context.state``);
- the optimizer state (AdamW moments) lives in ``context.state`` too, as a ColA client keeps
  its own (``optimizer-state = "reset"``: a fresh optimizer per round, as FlowerTune);
- the model is built once per process and task config and reused across rounds (and by every
  node of an in-process run: each call loads the global weights before training).
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cola_fed.baselines.fedavg_lora import lora
from cola_fed.baselines.fedavg_lora.options import BaselineOptions, batch_seed, parse_run_config
from cola_fed.config import RunConfig, TaskConfig
from cola_fed.tasks.base import ClientData

#: context.state keys: the node's progress (batches drawn, optimizer steps) and optimizer state
PROGRESS = "fedavg-lora.progress"
OPTIMIZER = "fedavg-lora.optimizer"

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global LoRA weights, train ``local-steps`` steps, reply with the new weights."""
    config, _ = parse_run_config(dict(context.run_config))
    order = msg.content["config"]
    # what the server asks is checked as the run config's own keys are
    asked = BaselineOptions(local_steps=order.get("local-steps", 1),
                            optimizer_state=order.get("optimizer-state", "keep"))
    steps, keep = asked.local_steps, asked.optimizer_state == "keep"
    task_config, partition_id, num_partitions = _partition(config, context)
    model = _model(config.task, config.adapter)
    data = _client_data(task_config, _allowed(context), partition_id, num_partitions)

    lora.load_lora_state(model, {k: v.numpy() for k, v in msg.content["arrays"].items()})
    progress = context.state.get(PROGRESS, MetricRecord({"batches": 0, "steps": 0}))
    drawn, done = int(progress["batches"]), int(progress["steps"])
    spec = config.optimizer.spec()
    optimizer = lora.build_optimizer(model, spec)
    if keep and OPTIMIZER in context.state:
        lora.load_optimizer_state(optimizer, model, {
            k: v.numpy() for k, v in context.state[OPTIMIZER].items()})
    seed = batch_seed(config, partition_id)
    stream = _stream(context, data, config.task.batch_size, seed, drawn,
                     (task_config, partition_id, num_partitions, config.task.batch_size, seed))
    started = time.perf_counter()
    losses = lora.train_steps(model, stream, spec, steps, optimizer=optimizer,
                              first_step=done + 1)
    seconds = time.perf_counter() - started
    context.state[PROGRESS] = MetricRecord({"batches": drawn + steps, "steps": done + steps})
    if keep:
        context.state[OPTIMIZER] = _array_record(lora.optimizer_state(optimizer, model))
    metrics = MetricRecord({
        "num-examples": data.num_examples,
        "partition-id": partition_id,
        "examples-seen": steps * config.task.batch_size,
        "train-loss": float(np.mean(losses)),
        "train-loss-last": losses[-1],
        "step-seconds": seconds / steps,
        "train-seconds": seconds,
        "peak-rss-bytes": peak_rss_bytes(),
        "model-bytes": lora.model_bytes(model),
    })
    reply = RecordDict({"arrays": _array_record(lora.lora_state(model)), "metrics": metrics})
    return Message(reply, reply_to=msg)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (in-process runs: of all nodes and the server)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: kB


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _partition(config: RunConfig, context: Context) -> tuple[TaskConfig, int, int]:
    """The task config and partition of this node: its own ``data-path`` (all of it) when
    its node config sets one, else partition ``partition-id`` of ``num-partitions``."""
    local = context.node_config.get("data-path")
    if local:
        return dataclasses.replace(config.task, data_path=str(local)), 0, 1
    return (config.task, int(context.node_config.get("partition-id", 0)),
            int(context.node_config.get("num-partitions", 1)))


def _allowed(context: Context) -> frozenset[str]:
    from cola_fed.tasks.registry import node_allowed_paths

    return node_allowed_paths(context.node_config)


@functools.lru_cache(maxsize=2)
def _model(task_config: TaskConfig, adapter_config: Any) -> Any:
    """The LoRA model of this task, built once per process (the weights are loaded from each
    message, so one model serves every round and every in-process node)."""
    return lora.build_lora_model(RunConfig(task=task_config, adapter=adapter_config))


@functools.lru_cache(maxsize=16)
def _client_data(task_config: TaskConfig, allowed: frozenset[str], partition_id: int,
                 num_partitions: int) -> ClientData:
    from cola_fed.tasks import get_task

    return get_task(task_config, allowed_paths=allowed).client_data(partition_id,
                                                                    num_partitions)


#: (run id, node id) -> (the node's batch stream, its position, what it streams)
_streams: dict[tuple[int, int], tuple[Iterator, int, tuple]] = {}


def _stream(context: Context, data: ClientData, batch_size: int, seed: int, position: int,
            what: tuple) -> Iterator:
    """The node's seeded batch stream at ``position``: kept in this process between rounds,
    rebuilt (and fast-forwarded) when the process is new, as under Flower's deployment, or
    when it streams something else (``what``) or stands elsewhere."""
    key = (context.run_id, context.node_id)
    for other in [k for k in _streams if k[0] != context.run_id]:
        del _streams[other]  # an earlier run's (one run at a time per process)
    entry = _streams.get(key)
    if entry is None or entry[1:] != (position, what):
        stream = data.batches(batch_size, seed)
        for _ in range(position):
            next(stream)
        _streams[key] = (stream, position, what)
    return _counted(key)


def _counted(key: tuple[int, int]) -> Iterator:
    """Batches of the stream kept under ``key``, advancing its recorded position."""
    while True:
        stream, position, what = _streams[key]
        batch = next(stream)
        _streams[key] = (stream, position + 1, what)
        yield batch
