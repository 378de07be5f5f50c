"""The FedAvg-LoRA baseline (cola_fed.baselines.fedavg_lora): a real Flower ServerApp/ClientApp
pair over PEFT LoRA, on the digits task.

- one node, one local step per round: R rounds of FedAvg-LoRA are R steps of PEFT LoRA by
  plain backprop on the same batches, and R steps of ColA's Gradient Learning (GL == backprop);
- its LoRA starts from ColA's initial adapters of the seed, and computes what ColA's engine
  computes with the same adapters;
- several nodes: per-round metrics and bytes, and the global model is the num-examples-weighted
  mean of the replies;
- local-only training keeps one model per node.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

peft = pytest.importorskip("peft")

from cola_fed.adapters.spec import AdapterSpec  # noqa: E402
from cola_fed.baselines.fedavg_lora import lora, run_fedavg_lora, run_local_lora  # noqa: E402
from cola_fed.baselines.fedavg_lora.options import (  # noqa: E402
    adapter_seed,
    batch_seed,
    parse_run_config,
)
from cola_fed.baselines.fedavg_lora.run import run_fedavg_lora_with_weights  # noqa: E402
from cola_fed.errors import ConfigError  # noqa: E402
from cola_fed.gl.engine import ServerEngine  # noqa: E402
from cola_fed.gl.learner import GradientLearner  # noqa: E402
from cola_fed.tasks import get_task  # noqa: E402

ROUNDS = 3
BASE = {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 1,
        "task.server-test-size": 200, "task.seed": 3, "adapter.rank": 4,
        "num-server-rounds": ROUNDS}
OPTIMIZERS = {
    "adamw": {"optimizer.name": "adamw", "optimizer.lr": 0.02},
    # momentum, Nesterov, L2 weight decay on the LoRA layers... and warmup, decay, clipping
    "sgd": {"optimizer.name": "sgd", "optimizer.lr": 0.5, "optimizer.momentum": 0.9,
            "optimizer.nesterov": True, "optimizer.warmup-steps": 1,
            "optimizer.total-steps": 5, "optimizer.max-grad-norm": 0.05},
}


def cola_specs(rank=4):
    return {"*": AdapterSpec(kind="lowrank", rank=rank), "head": AdapterSpec(kind="linear",
                                                                            bias=True)}


def max_diff(a, b):
    assert set(a) == set(b)
    return max(float(np.abs(np.asarray(a[layer][p]) - np.asarray(b[layer][p])).max())
               for layer in a for p in a[layer])


@pytest.fixture(scope="module", params=sorted(OPTIMIZERS))
def one_node(request):
    """FedAvg-LoRA with one node, one local step per round: its results and final weights."""
    flat = {**BASE, **OPTIMIZERS[request.param]}
    results, weights = run_fedavg_lora_with_weights(flat, num_nodes=1)
    return flat, results, weights


def test_one_node_is_peft_lora_backprop_and_cola_gradient_learning(one_node):
    flat, results, weights = one_node
    config, _ = parse_run_config(flat)
    task = get_task(config.task)
    batches = task.client_data(0, 1).batches(config.task.batch_size, batch_seed(config, 0))
    batches = [next(batches) for _ in range(ROUNDS)]
    spec = config.optimizer.spec()

    # PEFT LoRA by plain backprop, one optimizer over the rounds, written out here
    model = lora.build_lora_model(config, seed=adapter_seed(config, 0))
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                                    nesterov=spec.nesterov, weight_decay=spec.weight_decay)
    for step, batch in enumerate(batches, start=1):
        for group in optimizer.param_groups:
            group["lr"] = spec.lr_at(step)
        optimizer.zero_grad()
        F.cross_entropy(model(x=torch.as_tensor(batch["x"])),
                        torch.as_tensor(batch["labels"])).backward()
        if spec.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
    peft_state = lora.lora_state(model)

    # ColA: the frozen base on the server, Gradient Learning on the client
    engine = ServerEngine(task.build_model(), targets=["fc1", "fc2", "head"])
    learner = GradientLearner(engine.layout, cola_specs(), optimizer=spec,
                              seed=adapter_seed(config, 0))
    for batch in batches:
        batch = {k: torch.as_tensor(v) for k, v in batch.items()}
        learner.fit(engine.compute({"c": batch}, {"c": learner.adapter_state()},
                                   specs={"c": cola_specs()})["c"])
    cola_state = {n: {p: v.numpy() for p, v in ps.items()}
                  for n, ps in learner.adapter_state().items()}

    assert set(weights) == set(peft_state)
    fedavg_vs_peft = max(float(np.abs(weights[k] - peft_state[k]).max()) for k in weights)
    fedavg_vs_cola = max_diff(lora.cola_adapters(model, weights), cola_state)
    moved = max(float(np.abs(v["B"]).max()) for n, v in cola_state.items() if n != "head")
    print(f"{spec.name}: max |FedAvg-LoRA - PEFT| {fedavg_vs_peft:.2e}, "
          f"|FedAvg-LoRA - ColA| {fedavg_vs_cola:.2e}, largest B {moved:.3f}")
    assert moved > 1e-3  # it trained
    assert fedavg_vs_peft <= 1e-5
    assert fedavg_vs_cola <= 1e-5
    # the server's record of the run
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    assert all(r["nodes"] == 1 and r["examples-seen"] == 16 for r in rounds[1:])


def test_local_only_with_one_node_is_fedavg_with_one_node(one_node):
    flat, fedavg, _ = one_node
    local = run_local_lora(flat, num_nodes=1)
    assert local["method"] == "local-lora" and len(local["rounds"]) == ROUNDS + 1
    for a, b in zip(fedavg["rounds"], local["rounds"]):
        assert a["server-accuracy"] == pytest.approx(b["server-accuracy"], abs=1e-9)
        assert a["server-loss"] == pytest.approx(b["server-loss"], rel=1e-5)
        assert b["bytes-down-per-node"] == b["bytes-up-per-node"] == 0


@pytest.mark.parametrize("seed", [0, 5])
def test_initial_lora_is_colas_initial_adapters(seed):
    config, _ = parse_run_config({**BASE, "task.seed": 0})
    model = lora.build_lora_model(config, seed=seed)
    engine = ServerEngine(get_task(config.task).build_model(), targets=["fc1", "fc2", "head"])
    learner = GradientLearner(engine.layout, cola_specs(), seed=seed)
    expected = {n: {p: v.numpy() for p, v in ps.items()}
                for n, ps in learner.adapter_state().items()}
    assert max_diff(lora.cola_adapters(model), expected) == 0.0
    state = lora.lora_state(model)
    assert state["base_model.model.fc1.lora_A.default.weight"].shape == (4, 64)
    assert not np.any(state["base_model.model.fc2.lora_B.default.weight"])

    # with trained-looking adapters the LoRA model computes ColA's adapted model
    rng = np.random.default_rng(seed)
    adapters = {n: {p: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
                    for p, v in ps.items()} for n, ps in expected.items()}
    lora.load_lora_state(model, lora.lora_from_cola(model, adapters))
    batch = get_task(config.task).server_test_batches()[0]
    got = lora.predict(model, batch)
    want = engine.predict({k: torch.as_tensor(v) for k, v in batch.items()}, adapters,
                          spec=cola_specs())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert max_diff(lora.cola_adapters(model), adapters) <= 1e-6


def test_several_nodes_average_by_num_examples():
    # label skew, so that the partitions differ in size and the weighting shows
    flat = {**BASE, **OPTIMIZERS["adamw"], "num-server-rounds": 2,
            "task.partitioner": "dirichlet", "task.dirichlet-alpha": 1.0}
    last = {}

    def keep_reply(node_id, reply):
        last[node_id] = ({k: v.numpy() for k, v in reply.content["arrays"].items()},
                         reply.content["metrics"]["num-examples"])
        return reply

    results, weights = run_fedavg_lora_with_weights(flat, num_nodes=3, local_steps=2,
                                                    reply_filter=keep_reply)
    rounds = results["rounds"]
    assert results["method"] == "fedavg-lora" and results["num-nodes"] == 3
    assert [r["round"] for r in rounds] == [0, 1, 2]
    state_bytes = results["lora-state-bytes"]
    for entry in rounds[1:]:
        assert entry["nodes"] == 3 and entry["examples-seen"] == 3 * 2 * 16
        assert 0 <= entry["server-accuracy"] <= 1 and np.isfinite(entry["server-loss"])
        # what travels is the LoRA state (plus Flower's array headers), not the base model
        assert state_bytes <= entry["bytes-down-per-node"] < 1.2 * state_bytes
        assert entry["bytes-up-per-node"] == entry["bytes-down-per-node"]
        assert state_bytes < results["model-bytes"]
        per_node = entry["per-node"]
        assert sorted(m["partition-id"] for m in per_node) == [0, 1, 2]
        total = sum(m["num-examples"] for m in per_node)
        assert entry["num-examples"] == total
        assert entry["train-loss"] == pytest.approx(
            sum(m["train-loss"] * m["num-examples"] for m in per_node) / total)
    # the global model is the num-examples-weighted mean of the last round's replies
    assert len(last) == 3
    total = sum(n for _, n in last.values())
    for key, value in weights.items():
        expected = sum(w[key] * n for w, n in last.values()) / total
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)
    plain = {key: sum(w[key] for w, _ in last.values()) / 3 for key in weights}
    assert max(float(np.abs(plain[k] - weights[k]).max()) for k in weights) > 1e-4


def test_local_only_runs_one_model_per_node():
    flat = {**BASE, **OPTIMIZERS["adamw"], "num-server-rounds": 2}
    results = run_local_lora(flat, num_nodes=3, local_steps=2)
    assert results["num-nodes"] == 3
    last = results["rounds"][-1]
    per_node = last["per-node"]
    assert [m["partition"] for m in per_node] == [0, 1, 2]
    accuracies = [m["server-accuracy"] for m in per_node]
    assert last["server-accuracy"] == pytest.approx(np.mean(accuracies))
    assert last["server-accuracy-std"] == pytest.approx(np.std(accuracies))
    losses = [m["server-loss"] for m in per_node]
    assert len(set(losses)) == 3  # three different models
    assert last["bytes-down-per-node"] == last["bytes-up-per-node"] == 0


def test_baseline_keys_are_checked():
    with pytest.raises(ConfigError, match="local-steps"):
        parse_run_config({**BASE, "local-steps": 0})
    with pytest.raises(ConfigError, match="optimizer-state"):
        parse_run_config({**BASE, "optimizer-state": "sometimes"})
    with pytest.raises(ConfigError, match="unknown run config key"):
        run_fedavg_lora({**BASE, "local-stpes": 2}, num_nodes=1)
