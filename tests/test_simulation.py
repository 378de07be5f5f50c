"""End to end: `flwr run .` on Flower's local simulation engine, through `cola-fed simulate`."""

import json

import pytest

from cola_fed.federation import simulate as sim

pytestmark = pytest.mark.slow
pytest.importorskip("ray")


@pytest.fixture
def ports(monkeypatch) -> list[int]:
    """The ports every simulation of the test picks (to find its processes)."""
    picked = []
    real_free_port = sim.free_port

    def recording_free_port():
        picked.append(real_free_port())
        return picked[-1]

    monkeypatch.setattr(sim, "free_port", recording_free_port)
    return picked


def test_flwr_run_digits_two_rounds_and_nothing_left_behind(tmp_path, ports):
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


def test_a_simulation_killed_mid_run_resumes_to_the_adapters_of_an_uninterrupted_one(
        tmp_path, ports):
    """Every process of a `flwr run` simulation (SuperLink, SuperExec, the ServerApp and its
    simulated nodes) is killed with SIGKILL after round 2's checkpoint; `cola-fed simulate
    --resume` then finishes the run, in a new Flower run, with exactly the adapters of a run that
    was never interrupted."""
    import os
    import signal
    import threading
    import time

    overrides = {"num-server-rounds": 5, "strategy.min-available-nodes": 2,
                 "strategy.evaluate-every": 1}
    clean = sim.simulate("digits", output_dir=tmp_path / "clean", stream=False,
                         overrides=overrides)
    out = tmp_path / "killed"
    ports.clear()  # the killed run's
    failed = []

    def doomed_run():
        try:
            sim.simulate("digits", output_dir=out, stream=False, overrides=overrides)
        except sim.ColaError as err:
            failed.append(err)

    runner = threading.Thread(target=doomed_run)
    runner.start()
    pointer = out / "checkpoint" / "LATEST"

    def last_round() -> int:  # the results follow the checkpoint (a plot takes a while)
        try:
            return json.loads((out / "metrics.json").read_text())["last-round"]
        except (OSError, ValueError, KeyError):
            return -1

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
            pointer.is_file() and pointer.read_text() not in ("round-0.json", "round-1.json")
            and last_round() >= 2):
        time.sleep(0.05)
    victims = sim.flower_processes_on_ports(*ports)
    assert victims, "no simulation processes to kill"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=120)
    assert failed and not runner.is_alive()
    killed_after = json.loads((out / "metrics.json").read_text())["last-round"]
    assert 2 <= killed_after < 5

    resumed = sim.simulate("digits", output_dir=out, stream=False, overrides=overrides,
                           resume=True)
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3, 4, 5]
    assert all(node["rounds-trained"] == 5 for node in metrics["nodes"].values())
    for p in range(2):
        name = f"adapters/partition-{p}.safetensors"
        assert (resumed / name).read_bytes() == (clean / name).read_bytes(), name


def test_flwr_run_your_own_model_and_data_from_any_folder(tmp_path, monkeypatch, ports):
    """A generic causal-LM task on a model folder and a JSONL file given by paths relative to
    the working folder, in a TOML outside the package, one node per user: the simulated nodes
    read the data and tokenise it with the tokenizer the server ships."""
    from test_tasks import save_tiny_llama, sentiment_rows

    rows = sentiment_rows(150)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_tiny_llama(tmp_path / "model", rows)
    (tmp_path / "mine.toml").write_text(
        'num-server-rounds = 2\ntask.name = "causal-lm"\ntask.model = "model"\n'
        'task.data-path = "data.jsonl"\ntask.partition-by = "user"\ntask.batch-size = 8\n'
        'task.max-length = 16\ntask.eval-batches = 2\nstrategy.min-available-nodes = 3\n'
        'strategy.evaluate-every = 1\n')
    monkeypatch.chdir(tmp_path)
    out = sim.simulate("mine.toml", output_dir=tmp_path / "out", stream=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert all(r["nodes"] == 3 and r["failed"] == 0 for r in metrics["rounds"][1:])
    assert metrics["rounds"][-1]["perplexity-mean"] < metrics["rounds"][0]["perplexity-mean"]
    assert sim.flower_processes_on_ports(*ports) == []
