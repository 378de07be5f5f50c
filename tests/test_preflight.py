"""The pre-flight check (cola_fed/federation/preflight.py): a misspelt ``adapter.targets`` is
refused before Flower starts and before any weight is read, with the closest module names, and
in the same way by ``cola-fed simulate``, ``cola-fed experiment`` and the ServerApp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cola_fed.config import RunConfig
from cola_fed.errors import TargetError
from cola_fed.experiments.config import ExperimentConfig
from cola_fed.experiments.runner import run_experiment
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.server import run_server
from cola_fed.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "cola-fed")
ROWS = [{"question": f"what is {i}?", "answer": f"it is {i}", "text": f"say {i}"}
        for i in range(24)]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A random Llama's folder (config, weights, tokenizer) and an instruction JSONL."""
    from test_tasks import save_tiny_llama

    root = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_llama(root / "model", ROWS)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


def llama_flat(root: Path, **extra) -> dict:
    return {"task.name": "causal-lm", "task.model": str(root / "model"),
            "task.data-path": str(root / "data.jsonl"), "task.prompt-column": "question",
            "task.response-column": "answer", "task.batch-size": 2, "task.max-length": 16,
            "task.eval-batches": 1, **extra}


def test_a_misspelt_target_names_the_closest_modules(tiny_llama):
    from cola_fed.federation.preflight import preflight

    config = RunConfig.from_flat(llama_flat(tiny_llama, **{"adapter.targets": "q_prj,v_proj"}))
    with pytest.raises(TargetError) as info:
        preflight(config, 2)
    message = str(info.value)
    assert message.startswith("adapter.targets: target 'q_prj' matches no module")
    assert "did you mean 'q_proj'" in message
    for layer in ("k_proj", "o_proj", "gate_proj", "lm_head"):  # what it could adapt
        assert layer in message
    assert "embed_tokens" not in message and "norm" not in message.split("layers it")[1]
    # dotted targets are matched against dotted suffixes as long
    config = RunConfig.from_flat(llama_flat(tiny_llama, **{"adapter.targets": "self_atn.q_proj"}))
    with pytest.raises(TargetError, match=r"did you mean 'self_attn\.q_proj'"):
        preflight(config, 2)
    preflight(RunConfig.from_flat(llama_flat(tiny_llama, **{"adapter.targets": "q_proj"})), 2)


@pytest.mark.parametrize("flat", [
    {"task.name": "digits"}, {"task.name": "mnist"}, {"task.name": "byte-lm"},
    {"task.name": "text-classification"},
])
def test_targets_resolve_on_a_model_without_weights(flat):
    from cola_fed.federation.preflight import preflight, structure_model

    task = get_task(RunConfig.from_flat(flat).task)
    model = structure_model(task)
    assert {p.device.type for p in model.parameters()} == {"meta"}  # no weight read or made
    preflight(RunConfig.from_flat(flat))


def test_hugging_face_models_are_built_from_their_config_alone(tiny_llama):
    from cola_fed.federation.preflight import structure_model

    task = get_task(RunConfig.from_flat(llama_flat(tiny_llama)).task)
    model = structure_model(task)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    real = dict(task.build_model().named_modules())
    assert [(n, type(m)) for n, m in model.named_modules()] == [
        (n, type(m)) for n, m in real.items()]


def test_the_server_app_checks_before_it_starts(tmp_path):
    """The ServerApp (deployed or simulated) runs the same check: the same one-line error."""
    flat = {"task.name": "digits", "adapter.targets": "fc_1", "output-dir": str(tmp_path),
            "strategy.min-available-nodes": 2}
    with pytest.raises(TargetError, match="did you mean 'fc1'"):
        run_server(LocalGrid(2), flat)
    assert not (tmp_path / "metrics.json").exists()


def test_an_experiment_checks_before_any_arm_runs(tmp_path):
    said: list[str] = []
    config = ExperimentConfig(
        name="typo", run_config={"task.name": "digits", "task.server-test-size": 64,
                                 "adapter.targets": "fc1,fc_2"},
        nodes=2, rounds=1, evaluate_every=1, seeds=(0,), partitions=("iid",),
        arms=("peft-central", "cola-unmerged"), cost_rounds=0)
    with pytest.raises(TargetError, match="did you mean 'fc2'"):
        run_experiment(config, tmp_path, say=said.append)
    assert said == [] and not (tmp_path / "typo.json").exists()


@pytest.mark.slow  # a CLI process importing torch and transformers: 5-40 s on 2 busy cores
def test_simulate_refuses_a_misspelt_target_before_flower_starts(tmp_path):
    """Today's cost of the mistake was ~20-30 s and a 30-line Flower traceback."""
    toml = tmp_path / "typo.toml"
    toml.write_text((ROOT / "cola_fed" / "simulations" / "default.toml").read_text()
                    + 'adapter.targets = "qeury,value"\n')
    env = {**os.environ, "COLA_FED_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "FLWR_HOME": str(tmp_path / "flwr")}
    started = time.perf_counter()
    result = subprocess.run([CLI, "simulate", str(toml), "--out", str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    seconds = time.perf_counter() - started
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cola-fed simulate: adapter.targets: target 'qeury'")
    assert "did you mean 'query'" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert "SuperNode" not in result.stdout + result.stderr  # Flower never started
    assert not (tmp_path / "out" / "metrics.json").exists()
    print(f"refused in {seconds:.1f} s")


def test_a_run_skips_invalid_rows_on_the_server_and_its_nodes_and_says_so(tmp_path):
    """task.skip-invalid-rows: the server (its pre-flight) and the simulated nodes (through
    the environment cola-fed simulate and experiments give them) drop the same rows, train on
    the rest, and metrics.json counts them; off, the run is refused before it starts."""
    from cola_fed.errors import ConfigError
    from cola_fed.experiments.cola_arms import simulated_nodes
    from cola_fed.tasks.digits import load_digits

    features, labels = load_digits()
    lines = ["label," + ",".join(f"f{i}" for i in range(features.shape[1]))]
    lines += [f"{label}," + ",".join(f"{v:g}" for v in row)
              for row, label in zip(features[:160], labels[:160])]
    for at in (5, 50, 90):  # three rows lose their label: file lines at + 1
        lines[at] = "," + lines[at].split(",", 1)[1]
    path = tmp_path / "own.csv"
    path.write_text("\n".join(lines) + "\n")
    flat = {"task.name": "digits", "task.data-path": str(path), "task.batch-size": 16,
            "task.eval-batches": 2, "num-server-rounds": 1, "output-dir": str(tmp_path / "out"),
            "strategy.min-available-nodes": 2, "checkpoint.every": 0, "edge.graphs": False}
    with pytest.raises(ConfigError, match=r"3 of its 160 rows cannot be used:\n  line 6: no "
                       r"label.*\n  line 51: .*\n  line 91: "):
        run_server(LocalGrid(2), flat)
    with simulated_nodes(str(path), skip_invalid_rows=True):
        strategy = run_server(LocalGrid(2), {**flat, "task.skip-invalid-rows": True})
    assert strategy.last_round == 1 and len(strategy.members) == 2
    assert all(s.rounds_trained == 1 for s in strategy.members.values())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["skipped-rows"] == {str(path): 3}
