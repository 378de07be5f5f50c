"""``strategy.col-aggregate``: robust ways to form ``col`` mode's shared delta W. One hostile node
with adapters at ``strategy.max-adapter-norm`` among five drives the mean's model to a loss of
about 1e10; under the trimmed and the clipped mean the clean nodes' loss stays within 10% of a
run without it."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from conftest import randomize, vector_batch
from federation_runs import DIGITS

from cola_fed import AdapterSpec, GradientLearner, ServerEngine
from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
from cola_fed.federation.adversary import adapter_edit, hostile_node
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.server import build_strategy
from cola_fed.gl.engine import ColAggregate

LINEAR = AdapterSpec(kind="linear", bias=True)
CLIENTS = "abcde"


def states_of(engine, scale=0.1):
    states = {}
    for i, c in enumerate(CLIENTS):
        learner = GradientLearner(engine.layout, LINEAR, lr=1e-2, dtype=torch.float64, seed=i)
        states[c] = randomize(learner.adapter_state(), seed=i, scale=scale)
    return states


def own_deltas(engine, states):
    return {c: engine.collaborative_deltas({c: s}) for c, s in states.items()}


def test_trimmed_mean_is_flowers_trim_mean_per_coordinate(net64):
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

    engine = ServerEngine(net64, targets=["fc1", "fc2"])
    states = states_of(engine)
    states["e"]["fc1"]["weight"] = states["e"]["fc1"]["weight"] * 1e6  # one far out
    own = own_deltas(engine, states)
    for beta in (0.0, 0.2, 0.4):
        got = engine.collaborative_deltas(states, aggregate=ColAggregate("trimmed-mean", beta))
        for layer, (dw, db) in got.items():
            for i, value in enumerate((dw, db)):
                want = trim_mean(np.stack([own[c][layer][i].numpy() for c in CLIENTS]), beta)
                np.testing.assert_allclose(value.numpy(), want, rtol=1e-12, atol=1e-15)
    far = engine.collaborative_deltas(states, aggregate=ColAggregate("trimmed-mean", 0.2))
    assert far["fc1"][0].abs().max() < 1  # the far one is cut, coordinate by coordinate


def test_clipped_mean_clips_each_delta_to_a_multiple_of_the_median_norm(net64):
    engine = ServerEngine(net64, targets=["fc1", "fc2"])
    states = states_of(engine)
    states["e"]["fc2"]["weight"] = states["e"]["fc2"]["weight"] * 1e6
    own = own_deltas(engine, states)
    for multiple in (0.5, 1.0, 3.0):
        got = engine.collaborative_deltas(states, aggregate=ColAggregate("clipped-mean",
                                                                         clip_multiple=multiple))
        for layer in got:
            norms = {c: float(torch.cat([t.flatten() for t in own[c][layer]]).norm())
                     for c in CLIENTS}
            limit = multiple * statistics.median(norms.values())
            want = [sum(own[c][layer][i] * min(1.0, limit / norms[c]) for c in CLIENTS) / 5
                    for i in (0, 1)]
            for value, expected in zip(got[layer], want):
                torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-15)
    # the mean is today's: every delta counts in full
    mean = engine.collaborative_deltas(states, aggregate=ColAggregate("mean"))
    torch.testing.assert_close(mean["fc1"][0], sum(own[c]["fc1"][0] for c in CLIENTS) / 5)
    assert engine.collaborative_deltas(states)["fc2"][0].abs().max() > 1e3  # the default


def test_predict_col_and_compute_use_the_aggregate(net64):
    engine = ServerEngine(net64, targets=["fc1", "fc2"],
                          col_aggregate=ColAggregate("trimmed-mean", 0.2))
    states = states_of(engine)
    batch = vector_batch(6, seed=3)
    shared = engine.collaborative_deltas(states)
    trimmed = {"fc1": {"weight": shared["fc1"][0], "bias": shared["fc1"][1]},
               "fc2": {"weight": shared["fc2"][0], "bias": shared["fc2"][1]}}
    torch.testing.assert_close(engine.predict_col(batch, states),
                               engine.predict(batch, trimmed, spec=LINEAR))
    mean = engine.predict_col(batch, states, aggregate=ColAggregate())
    assert not torch.allclose(mean, engine.predict_col(batch, states))


@pytest.mark.parametrize(("key", "value"), [
    ("strategy.col-aggregate", "median"), ("strategy.col-trim-fraction", 0.5),
    ("strategy.col-trim-fraction", -0.1), ("strategy.col-clip-multiple", 0.0),
    ("strategy.col-clip-multiple", float("inf"))])
def test_bad_settings_name_their_key(key, value):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_flat({key: value})
    with pytest.raises(ConfigError):
        ColAggregate(**{{"strategy.col-aggregate": "rule", "strategy.col-trim-fraction":
                         "trim_fraction", "strategy.col-clip-multiple":
                         "clip_multiple"}[key]: value})


# --------------------------------------------------------------------------------------------
# one hostile node at the norm bound among five

BOUND, HOSTILE, ROUNDS = 1000.0, 1004, 8
SETTINGS = {**DIGITS, "edge.graphs": False, "num-server-rounds": ROUNDS, "optimizer.lr": 0.05,
            "task.eval-batches": 4, "strategy.mode": "col", "strategy.max-adapter-norm": BOUND}


def at_the_bound(state):
    """Every adapter tensor scaled to just under ``strategy.max-adapter-norm``: accepted."""
    def scaled(v):
        norm = float(np.linalg.norm(v))
        v = v if norm > 0 else np.ones_like(v)
        return (v * np.float32(0.999 * BOUND / float(np.linalg.norm(v)))).astype(np.float32)
    return {layer: {p: scaled(v) for p, v in ps.items()} for layer, ps in state.items()}


def clean_loss(rule: str, *, hostile: bool) -> float:
    """The mean held-out loss, after the last round, of the four clean nodes' model (partitions
    0-3 of 5), with or without partition 4's node at the bound."""
    strategy = build_strategy(RunConfig.from_flat({**SETTINGS, "strategy.col-aggregate": rule}))
    grid = LocalGrid(5, handlers={HOSTILE: hostile_node(adapter_edit(at_the_bound))})
    if not hostile:
        grid.disconnect(HOSTILE)
    strategy.start(grid, num_rounds=ROUNDS, timeout=3)
    assert strategy.stopped is None
    if hostile:  # its adapters at the bound were taken (they are within it)
        assert strategy.sessions[HOSTILE].rounds_trained >= 1
    clean = [s for n, s in strategy.sessions.items() if n != HOSTILE]
    assert len(clean) == 4 and all(s.rounds_trained == ROUNDS for s in clean)
    return statistics.fmean(s.history[-1]["loss"] for s in clean)


@pytest.mark.parametrize("rule", ["trimmed-mean", "clipped-mean"])
def test_a_robust_aggregate_keeps_the_clean_nodes_loss_within_ten_percent(rule):
    without, with_hostile = clean_loss(rule, hostile=False), clean_loss(rule, hostile=True)
    assert without < 0.9 * np.log(10)  # the clean run learned something
    assert with_hostile <= 1.1 * without, (rule, without, with_hostile)


def test_the_mean_is_poisoned_by_one_node_at_the_bound():
    assert clean_loss("mean", hostile=True) > 1e6 * clean_loss("mean", hostile=False)
