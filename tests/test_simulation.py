"""End to end: `flwr run .` on Flower's local simulation engine, through `cola-fed simulate`."""

import json

import pytest

from cola_fed.federation import simulate as sim

pytestmark = pytest.mark.slow
pytest.importorskip("ray")


def test_flwr_run_digits_two_rounds_and_nothing_left_behind(tmp_path, monkeypatch):
    ports = []
    real_free_port = sim.free_port

    def recording_free_port():
        ports.append(real_free_port())
        return ports[-1]

    monkeypatch.setattr(sim, "free_port", recording_free_port)
    out = sim.simulate("digits", output_dir=tmp_path / "out", stream=False,
                       overrides={"num-server-rounds": 2, "strategy.min-available-nodes": 2,
                                  "strategy.evaluate-every": 1})
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert all(r["nodes"] == 2 and r["failed"] == 0 for r in metrics["rounds"][1:])
    assert len(list((out / "adapters").glob("*.safetensors"))) == 2
    assert (out / "learning_curve.png").stat().st_size > 0
    assert len(ports) == 2 and sim.flower_processes_on_ports(*ports) == []


def test_flwr_run_half_onnx_half_torch_matches_all_torch(tmp_path, monkeypatch):
    """A real Flower simulation where partitions 0 and 2 train on ONNX Runtime gives the same
    adapters, node for node, as one where every node trains with PyTorch."""
    from cola_fed.wire import decode_adapter_state

    monkeypatch.setenv("COLA_FED_CACHE", str(tmp_path / "cache"))
    common = {"num-server-rounds": 3, "strategy.min-available-nodes": 4,
              "strategy.evaluate-every": 3, "adapter.kinds": "lowrank,mlp",
              "adapter.hidden": 32, "adapter.depth": 1}
    outs = {backends: sim.simulate("digits", output_dir=tmp_path / backends, stream=False,
                                   num_supernodes=4,
                                   overrides={**common, "edge.backends": backends})
            for backends in ("onnx,torch", "torch")}
    mixed = json.loads((outs["onnx,torch"] / "metrics.json").read_text())["nodes"]
    assert [mixed[str(p)]["backend"] for p in range(4)] == ["onnx", "torch", "onnx", "torch"]
    for p in range(4):
        ours, theirs = (decode_adapter_state((out / "adapters" / f"partition-{p}.safetensors")
                                             .read_bytes()) for out in outs.values())
        for layer, params in theirs.items():
            for name, value in params.items():
                assert abs(ours[layer][name] - value).max() <= 1e-5, (p, layer, name)
