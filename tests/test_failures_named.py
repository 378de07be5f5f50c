"""Failures are named: a sampled node that does not train is logged at WARNING with its node id,
partition (and the partition's name) and reason, once per run of failed rounds, kept in
metrics.json, and its return is logged; a node restarted under a new id trains again as soon as
its hello is in, whatever backoff its missed rounds earned.

Real federations of the digits task over ``LocalGrid`` (real node handlers, sealing, codec).
"""

from __future__ import annotations

import json
import logging

import pytest
from federation_runs import DIGITS, run_with_state
from flwr.app import Error, Message, MessageType

from cola_fed.config import RunConfig
from cola_fed.federation.adversary import NODE_TRAIN_ATTACKS, hostile_node
from cola_fed.federation.client import handle_hello, handle_train
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.server import build_strategy

FAST = {"strategy.timeout": 0.3, "strategy.max-server-batch": 16}


def warnings_about(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


def test_a_node_that_stops_answering_is_named_once_and_its_return_logged(tmp_path, caplog):
    def silent(node, msg):  # node 1001 is down in rounds 1 to 3: its messages go nowhere
        if node == 1001 and msg.metadata.message_type == MessageType.TRAIN and \
                msg.metadata.group_id in ("1", "2", "3"):
            return None
        return msg

    with caplog.at_level(logging.INFO, logger="cola_fed"):
        run_with_state(tmp_path, 7, 2, 5, overrides=FAST, message_filter=silent)
    named = warnings_about(caplog, "node 1001 (partition 1) failed")
    assert len(named) == 1, named  # once for the three rounds, not every round
    assert "round 1:" in named[0] and "(timeout): no reply within 0.3 s" in named[0]
    assert "round 4: node 1001 (partition 1) is back after 3 rounds" in caplog.text
    nodes = json.loads((tmp_path / "metrics.json").read_text())["nodes"]
    assert [(f["round"], f["node"], f["reason"]) for f in nodes["1"]["failed-rounds"]] == [
        (1, 1001, "timeout"), (2, 1001, "timeout"), (3, 1001, "timeout")]
    assert nodes["1"]["failing-since"] is None and nodes["1"]["rounds-trained"] == 2
    assert nodes["0"]["failed-rounds"] == [] and nodes["0"]["rounds-trained"] == 5


def test_error_replies_and_refusals_are_named_with_the_partition_name(caplog):
    """An error reply and a refusal (then quarantine) each name the node, its partition and
    the partition's name (``task.partition-by``), once; the quarantine is kept as a reason."""
    def failing(msg, context):  # node 1000 errs in rounds 1 and 2, then trains
        if msg.metadata.message_type == MessageType.QUERY:
            return handle_hello(msg, context)
        if msg.metadata.group_id in ("1", "2"):
            raise OSError("disk full")
        return handle_train(msg, context)

    rewrite, error = NODE_TRAIN_ATTACKS["labels out of range"]
    config = RunConfig.from_flat({**DIGITS, **FAST, "num-server-rounds": 4,
                                  "strategy.max-failures": 2})
    strategy = build_strategy(config)
    strategy.partition_names = ["ana", "bo"]  # what task.partition-by = "user" gives
    grid = LocalGrid(2, handlers={1000: failing, 1001: hostile_node(rewrite)})
    with caplog.at_level(logging.INFO, logger="cola_fed"):
        strategy.start(grid, num_rounds=4, timeout=3)
    errs = warnings_about(caplog, "node 1000 (partition 0 = 'ana') failed")
    assert len(errs) == 1 and "(error reply): OSError('disk full')" in errs[0], errs
    assert "round 3: node 1000 (partition 0 = 'ana') is back after 2 rounds" in caplog.text
    refused = warnings_about(caplog, "node 1001 (partition 1 = 'bo') failed")
    assert len(refused) == 1 and f"(refused): reply refused: {error}" in refused[0], refused
    assert "node 1001 (partition 1 = 'bo') quarantined" in caplog.text
    hostile = strategy.members[1]
    assert [(f["round"], f["reason"]) for f in hostile.failed_rounds] == [
        (1, "refused"), (2, "quarantined")]
    assert hostile.failing == (1, "quarantined") and error in hostile.last_error


def test_a_node_restarted_under_a_new_id_trains_as_soon_as_its_hello_is_in(tmp_path, caplog):
    """Node 1001 is down from round 1 while its id stays listed (Flower keeps a dead SuperNode
    online until its heartbeat runs out): its missed rounds earn it a backoff. Restarted with
    its state dir under a new id after round 5, it answers the next hello, takes its partition
    back and trains in that very round and every round after."""
    rounds = 8
    state = {"state-dir": str(tmp_path / "node-1")}
    grid = LocalGrid(2)
    grid.contexts[1001].node_config.update(state)
    sampled = []

    def down(node, msg):
        if node == 1001 and msg.metadata.message_type == MessageType.TRAIN:
            sampled.append(int(msg.metadata.group_id))
            return None
        return msg

    def restart(strategy):
        if strategy.last_round == 5:
            grid.disconnect(1001)
            grid.connect(2001, 1, 2, **state)

    grid.message_filter = down
    config = RunConfig.from_flat({**DIGITS, **FAST, "num-server-rounds": rounds})
    strategy = build_strategy(config)
    strategy.on_round = restart
    with caplog.at_level(logging.INFO, logger="cola_fed"):
        strategy.start(grid, num_rounds=rounds, timeout=0.3)
    assert sampled[:4] == [1, 2, 3, 4] and 5 not in sampled  # backed off after 4 misses
    session = strategy.members[1]
    assert session.node_id == 2001 and session.rounds_trained == rounds - 5
    assert [r["nodes"] for r in strategy.rounds[6:]] == [2, 2, 2]
    assert "round 6: node 2001 (partition 1) is back after 5 rounds" in caplog.text
    assert len(warnings_about(caplog, "(partition 1) failed")) == 1


@pytest.mark.slow
def test_a_node_error_reason_is_logged_and_kept_without_terminal_escapes(caplog):
    """A node's error reason is its own text: it reaches the log and metrics.json with no
    escape sequence, carriage return or bidirectional override a terminal would obey."""
    hostile = "\x1b]0;owned\x07\x1b[2J\rdisk \u202efull"

    def erring(msg, context):  # node 1000 answers its TRAIN with an error of its own wording
        if msg.metadata.message_type == MessageType.QUERY:
            return handle_hello(msg, context)
        return Message(Error(code=1, reason=hostile), reply_to=msg)

    strategy = build_strategy(RunConfig.from_flat({**DIGITS, **FAST, "num-server-rounds": 1}))
    with caplog.at_level(logging.INFO, logger="cola_fed"):
        strategy.start(LocalGrid(2, handlers={1000: erring}), num_rounds=1, timeout=3)
    [named] = warnings_about(caplog, "node 1000 (partition 0) failed")
    [failed] = strategy.members[0].failed_rounds
    for text in (named, failed["detail"]):
        assert "disk" in text and "full" in text, text
        assert not {"\x1b", "\x07", "\r", "\u202e"} & set(text), repr(text)
