"""An adapter family registered from outside cola-fed runs end to end: exact Gradient Learning
in the torch learner, ONNX export and the ONNX Runtime learner, and a federation of mixed
backends. The family lives in this test module; nothing in cola-fed names it."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import vector_batch
from federation_runs import run

from cola_fed import AdapterSpec, GradientLearner, OptimizerSpec, ServerEngine
from cola_fed.adapters import AdapterFamily, family_of, infer_spec, known_kinds, register_adapter
from cola_fed.adapters.base import Adapter, Params
from cola_fed.adapters.family import uniform
from cola_fed.config import AdapterConfig
from cola_fed.errors import AdapterError, ConfigError, ProtocolError

KIND = "scaled-lowrank"


class ScaledLowRank(AdapterFamily):
    """``g(x) = alpha / r * x A^T B^T``: LoRA with its own ``lora_alpha`` as an option."""

    kind = KIND
    ops = f"{__name__}:ScaledLowRankOps"
    fields = ("rank",)
    options: ClassVar[dict[str, type]] = {"alpha": float}
    mergeable = True

    def param_shapes(self, spec, d_in, d_out):
        return {"down": (spec.rank, d_in), "up": (d_out, spec.rank)}

    def init(self, spec, d_in, d_out, rng):
        return {"down": uniform(rng, (spec.rank, d_in), fan_in=d_in),
                "up": np.zeros((d_out, spec.rank))}



class ScaledLowRankOps(Adapter):
    @property
    def scale(self) -> float:
        return self.spec.option("alpha") / self.spec.rank

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return (x @ params["down"].T) @ params["up"].T * self.scale

    def vjp(self, params: Params, x: torch.Tensor, d: torch.Tensor) -> Params:
        d = d * self.scale
        return {"down": (d @ params["up"]).T @ x, "up": d.T @ (x @ params["down"].T)}

    def delta_weight(self, params: Params):
        return params["up"] @ params["down"] * self.scale, None


@pytest.fixture(autouse=True, scope="module")
def registered():
    register_adapter(ScaledLowRank)
    yield
    from cola_fed.adapters.registry import FAMILIES

    FAMILIES.pop(KIND, None)


def spec(alpha: float = 4.0, rank: int = 2) -> AdapterSpec:
    return AdapterSpec(kind=KIND, rank=rank, options={"alpha": alpha})


def test_the_family_is_known_and_its_options_are_checked():
    assert KIND in known_kinds() and family_of(KIND).mergeable
    assert spec().option("alpha") == 4.0 and spec().to_dict()["options"] == {"alpha": 4.0}
    with pytest.raises(ConfigError, match="needs alpha"):
        AdapterSpec(kind=KIND)
    with pytest.raises(ConfigError, match="no option 'beta'"):
        AdapterSpec(kind=KIND, options={"alpha": 1.0, "beta": 2})
    with pytest.raises(ConfigError, match="expected float"):
        AdapterSpec(kind=KIND, options={"alpha": "big"})
    with pytest.raises(ConfigError, match="no option"):
        AdapterSpec(kind="lowrank", options={"alpha": 1.0})
    with pytest.raises(ConfigError, match="no adapter family 'nope'"):
        AdapterSpec(kind="nope")
    with pytest.raises(AdapterError, match="cannot tell"):  # its alpha is not in a state
        infer_spec({"down": np.zeros((3, 5)), "up": np.zeros((4, 3))})


def test_options_are_canonical_and_name_distinct_graphs():
    from cola_fed.edge.graphs import GraphKey

    assert AdapterSpec(kind=KIND, rank=2, options=(("alpha", 2.0),)) == spec(2.0)
    for bad in ((("alpha", 1.0), ("alpha", 2.0)), {"alpha": float("nan")}, {"alpha": 2**60}):
        with pytest.raises(ConfigError, match=r"adapter\.options"):
            AdapterSpec(kind=KIND, options=bad)
    # option values are free text for a plugin: names must still tell every spec apart
    names = {GraphKey(spec(alpha), 4, 3, "sgd").name for alpha in (1.0, 10.0, 0.1, 1e-1 + 1e-9)}
    assert len(names) == 4 and all("/" not in n and "." not in n for n in names)


def test_config_gives_each_kind_its_own_options():
    config = AdapterConfig(kind=KIND, kinds="lowrank," + KIND, options="alpha=2.5", rank=2)
    assert config.spec_for(0).kind == "lowrank" and config.spec_for(0).options == ()
    assert config.spec_for(1).option("alpha") == 2.5
    with pytest.raises(ConfigError, match="no option of the kinds in use"):
        AdapterConfig(kind="lowrank", options="alpha=2")


def test_gradient_learning_equals_autograd_in_float64(net64):
    engine = ServerEngine(net64, targets=["fc1", "fc2"])
    learner = GradientLearner(engine.layout, spec(), dtype=torch.float64, seed=1)
    rng = np.random.default_rng(0)
    state = {n: {p: torch.from_numpy(rng.normal(size=v.shape)) for p, v in ps.items()}
             for n, ps in learner.adapter_state().items()}
    learner.load_adapter_state(state)
    batch = {k: v.double() if v.is_floating_point() else v
             for k, v in vector_batch(6, seed=2).items()}
    data = engine.compute({"c": batch}, {"c": state}, specs={"c": spec()})["c"]
    ours = learner.gradient(data)
    leaves = {n: {p: v.clone().requires_grad_(True) for p, v in ps.items()}
              for n, ps in state.items()}
    engine.close()
    hooks = [getattr(net64, n).register_forward_hook(
        lambda m, args, out, n=n: out + ScaledLowRankOps(spec()).forward(leaves[n], args[0]))
        for n in leaves]
    loss = torch.nn.functional.cross_entropy(net64(batch["x"]), batch["labels"])
    loss.backward()
    for hook in hooks:
        hook.remove()
    for n, ps in leaves.items():
        for p, leaf in ps.items():
            assert (ours[n][p] - leaf.grad).abs().max() <= 1e-12


def test_onnx_learner_trains_it_as_the_torch_learner(net64):
    from cola_fed.edge import OrtLearner, graph_keys
    from cola_fed.edge.export import export_graphs

    engine = ServerEngine(net64.float(), targets=["fc1", "fc2"])
    optimizer = OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, max_grad_norm=0.5)
    keys = graph_keys(engine.layout, [spec()], optimizer)
    assert all(name.startswith(f"{KIND}-rank2o") for name in keys)
    edge = OrtLearner(engine.layout, spec(), optimizer, export_graphs(keys.values()), seed=3)
    reference = GradientLearner(engine.layout, spec(), optimizer, seed=3)
    for step in range(4):
        batch = vector_batch(8, seed=step)
        batch["x"] = batch["x"].float()
        data = engine.compute({"c": batch},
                              {"c": reference.adapter_state()}, specs={"c": spec()})["c"]
        edge.fit(data)
        reference.fit(data)
    for n, ps in reference.adapter_state().items():
        for p, value in ps.items():
            assert np.abs(edge.adapter_state()[n][p] - value.numpy()).max() <= 1e-6


def test_a_federation_of_torch_and_onnx_nodes_runs_it():
    pytest.importorskip("onnxscript")
    overrides = {"adapter.kind": KIND, "adapter.options": "alpha=4.0", "adapter.rank": 2,
                 "edge.backends": "onnx,torch"}
    strategy, _ = run(overrides, nodes=2, rounds=3)
    sessions = {s.partition_id: s for s in strategy.sessions.values()}
    assert [sessions[p].backend for p in (0, 1)] == ["onnx", "torch"]
    for session in sessions.values():
        assert session.rounds_trained == 3
        assert {p for ps in session.adapters.values() for p in ps if p != "bias"} <= {
            "down", "up", "weight"}
        assert any(np.abs(ps["up"]).max() > 0 for ps in session.adapters.values() if "up" in ps)


def test_a_plan_naming_a_family_the_node_lacks_is_refused():
    from cola_fed.federation.protocol import _node_specs

    raw = {"*": {**spec().to_dict(), "kind": "not-installed"}}
    with pytest.raises(ProtocolError, match="not installed"):
        _node_specs(raw, "plan.node-specs[0]")
    with pytest.raises(ProtocolError, match="options"):
        _node_specs({"*": {**spec().to_dict(), "options": {"alpha": [1]}}}, "plan")
    assert _node_specs({"*": spec().to_dict()}, "plan")["*"] == spec()
