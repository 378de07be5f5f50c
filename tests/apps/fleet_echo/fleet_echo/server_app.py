"""The ServerApp of the fleet-echo test app: one echo query and one failing query to the first
node that connects; writes a JSON account of the replies to the run config's `out` path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

# Every value type a ConfigRecord holds, scalars and lists, with edge values.
CONFIG = {
    "int": -(2**62),
    "int-max": 2**63 - 1,
    "float": 1e-300,
    "float-neg-zero": -0.0,
    "str": "héllo ✓ \"quoted\" \\ \n",
    "str-empty": "",
    "bytes": bytes(range(256)),
    "bool": True,
    "ints": [1, -2, 2**63 - 1],
    "floats": [0.5, -1.25, 3.0],
    "strs": ["a", "", "ü"],
    "bytes-list": [b"\x00", b"xyz"],
    "bools": [True, False],
}
METRICS = {"m-int": 3, "m-float": 0.5, "m-ints": [1, 2], "m-floats": [1.5, -2.0]}


def big_array() -> np.ndarray:
    """1.5 M float32 values: 6 MB, more than one 5 MiB chunk."""
    return np.random.default_rng(0).standard_normal(1_500_000).astype(np.float32)


def typed(value):
    """A value with its Python type spelled out, so that int and float stay apart in JSON."""
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    return [type(value).__name__, repr(value)]


def wait_for_node(grid: Grid, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        node_ids = list(grid.get_node_ids())
        if node_ids:
            return node_ids[0]
        time.sleep(0.5)
    raise TimeoutError(f"no node connected within {seconds} s")


@app.main()
def main(grid: Grid, context: Context) -> None:
    out = Path(str(context.run_config["out"]))
    node_id = wait_for_node(grid, float(context.run_config["wait-for-nodes"]))
    big = big_array()
    small = np.arange(6, dtype=np.int64).reshape(2, 3)
    content = RecordDict({
        "config": ConfigRecord(dict(CONFIG)),
        "arrays": ArrayRecord({"big": Array(big), "small": Array(small)}),
        "metrics": MetricRecord(dict(METRICS)),
    })
    echo = Message(content, dst_node_id=node_id, message_type="query")
    fail = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=node_id,
                   message_type="query.fail")
    replies = list(grid.send_and_receive([echo, fail],
                                         timeout=float(context.run_config["reply-timeout"])))
    result: dict = {"node-id": node_id, "replies": len(replies)}
    for reply in replies:
        if reply.metadata.message_type == "query":
            result["echo"] = describe_echo(reply, big, small)
        else:
            result["fail"] = {
                "has-error": reply.has_error(),
                "code": reply.error.code if reply.has_error() else None,
                "reason": reply.error.reason if reply.has_error() else None,
            }
    out.write_text(json.dumps(result, indent=1))


def describe_echo(reply: Message, big: np.ndarray, small: np.ndarray) -> dict:
    if reply.has_error():
        return {"error": [reply.error.code, reply.error.reason]}
    got = reply.content
    config = dict(got.config_records["config"])
    arrays = got.array_records["arrays"]
    context = dict(got.config_records["echo.context"])
    return {
        "config-sent": {k: typed(v) for k, v in CONFIG.items()},
        "config-back": {k: typed(v) for k, v in config.items()},
        "big-equal": bool(np.array_equal(arrays["big"].numpy(), big)),
        "big-dtype": str(arrays["big"].numpy().dtype),
        "big-bytes": len(arrays["big"].data),
        "small-equal": bool(np.array_equal(arrays["small"].numpy(), small)),
        "metrics-sent": {k: typed(v) for k, v in METRICS.items()},
        "metrics-back": {k: typed(v) for k, v in dict(got.metric_records["metrics"]).items()},
        "context": {k: typed(v) for k, v in context.items()},
        "reply-src": reply.metadata.src_node_id,
    }
