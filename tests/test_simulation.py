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
