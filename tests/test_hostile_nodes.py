"""A node with valid keys that sends hostile content, against the real strategy over LocalGrid.

Each class of attack must be refused with a named error, for that node alone: the run goes on,
and the honest nodes end with the adapters of a clean run.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from federation_runs import DIGITS, run
from flwr.app import ConfigRecord

from cola_fed.config import RunConfig
from cola_fed.federation.adversary import (
    NODE_HELLO_ATTACKS,
    NODE_TRAIN_ATTACKS,
    batch_edit,
    hostile_node,
    scale,
)
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.protocol import CLEAR
from cola_fed.federation.server import build_strategy, run_server

pytest.importorskip("sklearn")

ROUNDS = 3
HOSTILE, HONEST = 1001, (1000, 1002)


@pytest.fixture(scope="module")
def clean():
    strategy, _ = run({}, nodes=3, rounds=ROUNDS)
    return strategy


def assert_honest_nodes_match(strategy, clean, rounds=ROUNDS, nodes=HONEST):
    for node in nodes:
        session = strategy.sessions[node]
        assert session.rounds_trained == rounds and not session.quarantined
        for layer, params in clean.sessions[node].adapters.items():
            for name, value in params.items():
                np.testing.assert_allclose(session.adapters[layer][name], value, rtol=0,
                                           atol=1e-6, err_msg=f"{node} {layer} {name}")


@pytest.mark.parametrize("attack", sorted(NODE_TRAIN_ATTACKS))
def test_a_hostile_train_reply_is_refused_for_that_node_alone(attack, clean, caplog):
    rewrite, error = NODE_TRAIN_ATTACKS[attack]
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run({}, nodes=3, rounds=ROUNDS,
                          handlers={HOSTILE: hostile_node(rewrite, rounds=lambda n: n == 1)})
    assert [r["round"] for r in strategy.rounds] == list(range(ROUNDS + 1))  # the run went on
    assert strategy.rounds[1]["failed"] == 1 and strategy.rounds[1]["nodes"] == 2
    assert f"reply refused: {error}" in caplog.text
    assert_honest_nodes_match(strategy, clean)
    # the hostile node was refused once, then (honest again) resumed from the state the
    # server held: it trained every later round
    assert strategy.sessions[HOSTILE].rounds_trained == ROUNDS - 1


@pytest.mark.parametrize("attack", sorted(NODE_HELLO_ATTACKS))
def test_a_hostile_hello_is_refused_and_the_others_train(attack, clean, caplog):
    rewrite, error = NODE_HELLO_ATTACKS[attack]
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run({}, nodes=3, rounds=ROUNDS,
                          handlers={HOSTILE: hostile_node(rewrite, on="hello")})
    assert "hello: refused node" in caplog.text and error in caplog.text
    if attack == "a partition another node holds":
        # a claim is no proof: every claimant of a contested partition is refused, so the
        # hostile node cannot take the honest holder's place (it can only deny it)
        assert set(strategy.sessions) == {1002}
        assert_honest_nodes_match(strategy, clean, nodes=(1002,))
    else:
        assert set(strategy.sessions) == set(HONEST)
        assert_honest_nodes_match(strategy, clean)


def test_clear_fields_of_the_wrong_type_or_extra_are_refused(clean, caplog):
    def rewrite(node, reply):
        if reply.has_error():
            return reply
        if node == HOSTILE and reply.metadata.message_type == "query":
            reply.content[CLEAR] = ConfigRecord({"node-public-key": "not bytes",
                                                 "partition-id": 0})
        elif node == 1002 and reply.metadata.message_type == "train":
            reply.content[CLEAR] = ConfigRecord({"server-round": 1})  # not part of a reply
        return reply

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run({}, nodes=3, rounds=ROUNDS, reply_filter=rewrite)
    assert set(strategy.sessions) == set(HONEST)
    assert "hello: refused node 1001: ProtocolError" in caplog.text
    assert "a reply that does not open was refused (not counted against the node): " \
        "ProtocolError" in caplog.text
    # node 1002's replies were all refused, but not counted against it (the relay may have
    # added the field): it keeps its adapters and is not quarantined
    assert strategy.sessions[1002].rounds_trained == 0
    assert not strategy.sessions[1002].quarantined
    assert strategy.rounds[-1]["round"] == ROUNDS


def test_a_batch_that_breaks_the_shared_pass_is_isolated(clean, caplog):
    """Adapters within a (deliberately loose) norm bound whose output overflows float32: the
    shared pass fails, is run again node by node, and only the node at fault is refused."""
    loose = {"strategy.max-adapter-norm": 1e37}
    clean_loose, _ = run(loose, nodes=3, rounds=ROUNDS)
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run(loose, nodes=3, rounds=ROUNDS,
                          handlers={HOSTILE: hostile_node(scale(1e17), rounds=lambda n: n == 1)})
    assert "the shared pass failed" in caplog.text
    assert "its batch breaks the pass: GradientError" in caplog.text
    assert_honest_nodes_match(strategy, clean_loose)
    assert strategy.rounds[2]["failed"] == 1


def test_repeated_faults_quarantine_the_node_and_the_run_goes_on(caplog):
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, grid = run({"strategy.max-failures": 2}, nodes=3, rounds=4,
                             handlers={HOSTILE: hostile_node(scale(1e20))})
    hostile = strategy.sessions[HOSTILE]
    assert hostile.quarantined and hostile.rounds_trained == 0 and hostile.failures == 2
    assert "quarantined for the rest of the run" in caplog.text
    sent = [m.metadata.dst_node_id for m in grid.delivered if m.metadata.message_type == "train"]
    assert sent.count(HOSTILE) == 2  # not sampled once quarantined
    assert all(strategy.sessions[n].rounds_trained == 4 for n in HONEST)


def test_the_run_stops_early_with_every_result_written(tmp_path, caplog):
    config = {**DIGITS, "num-server-rounds": 5, "strategy.max-failures": 1,
              "strategy.min-train-nodes": 2, "strategy.wait-for-nodes": 1.0,
              "output-dir": str(tmp_path / "out")}
    grid = LocalGrid(2, handlers={HOSTILE: hostile_node(scale(1e20))})
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy = run_server(grid, config)
    assert "min-train-nodes" in strategy.stopped
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["stopped-early"] == strategy.stopped
    assert metrics["nodes"]["1"]["quarantined"] is True
    assert metrics["nodes"]["0"]["rounds-trained"] == 1
    assert len(list((tmp_path / "out" / "adapters").glob("*.safetensors"))) == 2
    assert "AdapterBoundsError" in metrics["nodes"]["1"]["last-error"]


def test_results_hold_this_run_only(tmp_path):
    """A run that stops at hello leaves no adapters of an earlier run in its results folder,
    and says which nodes were refused and why."""
    out = tmp_path / "out"
    (out / "adapters").mkdir(parents=True)
    (out / "adapters" / "partition-7.safetensors").write_bytes(b"an earlier run's")
    config = {**DIGITS, "num-server-rounds": 1, "strategy.min-train-nodes": 2,
              "output-dir": str(out)}
    grid = LocalGrid(2, handlers={HOSTILE: hostile_node(scale(1e20), on="hello")})
    strategy = run_server(grid, config)
    metrics = json.loads((out / "metrics.json").read_text())
    assert strategy.stopped and metrics["stopped-early"] == strategy.stopped
    assert "AdapterBoundsError" in metrics["refused-at-hello"][str(HOSTILE)]
    assert not (out / "adapters" / "partition-7.safetensors").exists()


def test_token_ids_beyond_the_vocabulary_are_refused(caplog):
    overrides = {"task.name": "byte-lm", "task.max-length": 32}
    edit = batch_edit(lambda b: {**b, "input_ids": b["input_ids"] + 300})
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run(overrides, nodes=2, rounds=2,
                          handlers={HOSTILE: hostile_node(edit, rounds=lambda n: n == 1)})
    assert "reply refused: ContractError" in caplog.text and "input_ids" in caplog.text
    assert strategy.sessions[1000].rounds_trained == 2


def test_an_upload_smaller_than_a_batch_is_refused(caplog):
    edit = batch_edit(lambda b: {k: v[:5] for k, v in b.items()})

    def only_train(parts):
        train = edit({"train": parts["train"]})["train"]
        return {**parts, "train": train}

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run({"data.mode": "upload"}, nodes=3, rounds=2,
                          handlers={HOSTILE: hostile_node(only_train, on="hello")})
    assert set(strategy.sessions) == set(HONEST)
    assert "ContractError" in caplog.text and "train" in caplog.text


def test_one_config_builds_the_same_strategy_twice():
    """The persistent server identity: two strategies of one machine sign with one key."""
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1})
    first, second = build_strategy(config), build_strategy(config)
    from cola_fed.wire import public_bytes

    assert public_bytes(first.identity) == public_bytes(second.identity)
