"""A node's memory: the ONNX learner makes a session only for a graph a step runs, when it first
runs it, and checks it then, before it runs; the benchmark's options parse as the run config
reads them."""

from __future__ import annotations

import numpy as np
import pytest

from cola_fed import AdaptationData, AdapterSpec, OptimizerSpec
from cola_fed.edge.export import export_train_step
from cola_fed.edge.graphs import GraphKey
from cola_fed.edge.ort_learner import OrtLearner
from cola_fed.errors import AdapterError, ConfigError
from cola_fed.gl.layout import LayerInfo, Layout

LAYOUT = Layout((LayerInfo("q", 24, 16), LayerInfo("v", 24, 16)))  # one shape: one graph
SPEC = AdapterSpec(kind="lowrank", rank=4)
OPTIMIZER = OptimizerSpec(name="adamw", lr=1e-3)


def rows_chunk(rng: np.random.Generator) -> AdaptationData:
    x = {n: rng.standard_normal((7, 24)).astype(np.float32) for n in ("q", "v")}
    d = {n: (rng.standard_normal((7, 16)) * 1e-2).astype(np.float32) for n in ("q", "v")}
    return AdaptationData(x, d, {"q": "q", "v": "v"})


@pytest.fixture
def made(monkeypatch) -> list[bytes]:
    """The model bytes of every InferenceSession created."""
    import onnxruntime as ort

    made, real = [], ort.InferenceSession

    def counting(model, *args, **kwargs):
        made.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    return made


def test_sessions_are_made_for_the_graphs_a_step_runs_when_it_first_runs_them(made):
    rows = GraphKey(SPEC, 24, 16, "adamw", False)
    weight = GraphKey(SPEC, 24, 16, "adamw", False, "weight-gradient")
    graphs = {rows.name: export_train_step(rows), weight.name: export_train_step(weight)}
    learner = OrtLearner(LAYOUT, SPEC, OPTIMIZER, graphs, seed=1)
    assert made == []  # a hello builds a learner for its state only: no session
    rng = np.random.default_rng(0)
    learner.fit(rows_chunk(rng))
    assert made == [graphs[rows.name]]  # both layers share it; G's graph is never made
    learner.fit(rows_chunk(rng))
    assert len(made) == 1


def test_a_graph_of_other_shapes_is_refused_before_it_runs_and_changes_nothing(made):
    rows = GraphKey(SPEC, 24, 16, "adamw", False)
    other = GraphKey(AdapterSpec(kind="lowrank", rank=2), 24, 16, "adamw", False)
    learner = OrtLearner(LAYOUT, SPEC, OPTIMIZER, {rows.name: export_train_step(other)}, seed=1)
    before = learner.adapter_state()
    for _ in range(2):  # a refused graph is not kept: it is refused again
        with pytest.raises(AdapterError, match="parameter inputs"):
            learner.fit(rows_chunk(np.random.default_rng(0)))
    after = learner.adapter_state()
    assert learner.step == 0 and all(np.array_equal(after[n][p], before[n][p])
                                     for n in before for p in before[n])
    assert len(made) == 2


def test_the_memory_benchmark_reads_wire_settings_and_overrides_as_the_run_config():
    from benchmarks.edge import DEFAULT_WIRES, default_wires, parse_override, parse_wire

    assert parse_wire("rows") == ("rows", "float32")
    assert parse_wire("auto:float16") == ("auto", "float16")
    with pytest.raises(ConfigError):
        parse_wire("columns")
    assert parse_override('wire.form="auto"') == ("wire.form", "auto")
    assert parse_override("wire.form=auto") == ("wire.form", "auto")
    assert parse_override("optimizer.lr=0.01") == ("optimizer.lr", 0.01)
    with pytest.raises(SystemExit):
        parse_override("optimizer.lr")
    assert default_wires({"optimizer.lr": 0.01}) == list(DEFAULT_WIRES)
    assert [parse_wire(w) for w in default_wires({"wire.form": "auto"})] == [("auto", "float32")]
    assert parse_wire(default_wires({"wire.dtype": "float16"})[0])[1] == "float16"
