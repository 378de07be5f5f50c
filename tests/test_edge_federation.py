"""Nodes on ONNX Runtime in a federation: graphs shipped at hello, checked, cached; mixed
ONNX/PyTorch federations train the same adapters as all-PyTorch ones; a node runs without torch."""

import numpy as np
import pytest
from federation_runs import DIGITS, run

from cola_fed.config import RunConfig
from cola_fed.federation.local_grid import LocalGrid, NodeProcess
from cola_fed.federation.protocol import GRAPHS
from cola_fed.federation.server import build_strategy

pytest.importorskip("sklearn")
pytest.importorskip("onnxscript")


@pytest.fixture(autouse=True)
def graph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COLA_FED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "graphs"


def by_partition(strategy):
    return {s.partition_id: s for s in strategy.sessions.values()}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_half_onnx_half_torch_trains_the_adapters_of_an_all_torch_run(optimizer):
    overrides = {"adapter.kinds": "lowrank,linear,mlp,lowrank", "optimizer.name": optimizer,
                 "optimizer.momentum": 0.9, "adapter.hidden": 16, "adapter.depth": 1}
    mixed, _ = run({**overrides, "edge.backends": "onnx,torch"}, nodes=4, rounds=5)
    torch_only, _ = run({**overrides, "edge.backends": "torch"}, nodes=4, rounds=5)
    mixed_nodes, reference = by_partition(mixed), by_partition(torch_only)
    assert [mixed_nodes[p].backend for p in range(4)] == ["onnx", "torch", "onnx", "torch"]
    assert {s.backend for s in reference.values()} == {"torch"}
    for p, session in mixed_nodes.items():
        assert session.rounds_trained == 5
        for layer, params in session.adapters.items():
            for name, value in params.items():
                expected = reference[p].adapters[layer][name]
                assert np.abs(value - expected).max() <= 1e-5, (p, layer, name)
                if p in (1, 3):  # the torch nodes of both runs are the same computation
                    np.testing.assert_array_equal(value, expected)


def test_a_node_without_torch_runs_the_client_path():
    """The node's process cannot import torch; it joins, trains and matches a torch node."""
    node = NodeProcess(without_torch=True)
    try:
        edge, grid = run({"adapter.kind": "mlp", "adapter.hidden": 16, "adapter.depth": 1},
                         nodes=1, rounds=3, processes={1000: node})
    finally:
        node.close()
    assert len(node.stats) == 4 and not any(s["torch_imported"] for s in node.stats)
    session = by_partition(edge)[0]
    assert session.backend == "onnx" and session.rounds_trained == 3
    assert grid.contexts[1000].state["cola-session"]["backend"] == "onnx"
    reference = by_partition(run({"adapter.kind": "mlp", "adapter.hidden": 16,
                                  "adapter.depth": 1}, nodes=1, rounds=3)[0])[0]
    assert reference.backend == "torch"
    for layer, params in session.adapters.items():
        for name, value in params.items():
            assert np.abs(value - reference.adapters[layer][name]).max() <= 1e-5


def test_an_onnx_node_is_refused_clearly_when_the_server_ships_no_graphs(caplog):
    grid = LocalGrid(2)
    grid.contexts[1000].node_config["backend"] = "onnx"
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1, "edge.graphs": False})
    strategy = build_strategy(config)
    strategy.start(grid, num_rounds=1, timeout=3)
    assert [s.partition_id for s in strategy.sessions.values()] == [1]
    assert "edge.graphs = true" in caplog.text


def test_a_tampered_graph_is_refused_and_nothing_is_cached(graph_cache, caplog):
    def tamper(messages):
        for graphs in [m.content[GRAPHS] for m in messages if GRAPHS in m.content]:
            name = sorted(graphs)[0]  # flip one bit of one graph
            model = bytearray(graphs[name])
            model[-10] ^= 1
            graphs[name] = bytes(model)
        return messages

    class TamperingGrid(LocalGrid):
        def push_messages(self, messages):
            return super().push_messages(tamper(list(messages)))

    grid = TamperingGrid(2)
    grid.contexts[1000].node_config["backend"] = "onnx"
    strategy = build_strategy(RunConfig.from_flat({**DIGITS, "num-server-rounds": 1}))
    strategy.start(grid, num_rounds=1, timeout=3)
    assert [s.partition_id for s in strategy.sessions.values()] == [1]  # the torch node
    assert "does not match the listed" in caplog.text
    assert len(list(graph_cache.glob("*.onnx"))) == 0


def test_a_graph_altered_in_the_cache_stops_the_node(graph_cache, caplog):
    class AlteringGrid(LocalGrid):
        def push_messages(self, messages):
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                for path in graph_cache.glob("*.onnx"):
                    path.write_bytes(path.read_bytes() + b"\0")
            return super().push_messages(messages)

    grid = AlteringGrid(1)
    grid.contexts[1000].node_config["backend"] = "onnx"
    strategy = build_strategy(RunConfig.from_flat({**DIGITS, "num-server-rounds": 1}))
    strategy.start(grid, num_rounds=1, timeout=3)
    assert "altered on disk" in caplog.text
    assert by_partition(strategy)[0].rounds_trained == 0


def test_the_graph_cache_refuses_bad_hashes_and_paths(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from cola_fed.edge import GraphCache, content_hash
    from cola_fed.errors import PayloadError

    cache = GraphCache(tmp_path / "graphs")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [helper.make_tensor_value_info(
                                                    "y", TensorProto.FLOAT, [1])]))
    model = model.SerializeToString()
    assert onnx.load_from_string(model)
    with pytest.raises(PayloadError, match="not a SHA-256"):
        cache.put("g", model, "../../outside")
    with pytest.raises(PayloadError, match="does not match"):
        cache.put("g", model, content_hash(b"another model"))
    assert not (tmp_path / "graphs").exists() or not list((tmp_path / "graphs").iterdir())
    cache.put("g", model, content_hash(model))
    assert cache.get("g", content_hash(model)) == model
    with pytest.raises(PayloadError, match="not in the cache"):
        cache.get("h", content_hash(b"never stored"))
