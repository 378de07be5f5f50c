"""A hostile relay (the SuperLink, or anyone in the middle) between the real server and real
nodes: whatever it rewrites in the hello is caught before the node acts on it (no data read, no
graph stored or run, no session), and whatever it rewrites later fails for that message alone."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from federation_runs import DIGITS, run
from flwr.app import ConfigRecord

from cola_fed.config import RunConfig
from cola_fed.federation import client
from cola_fed.federation.adversary import RELAY_HELLO_REWRITES, replace_graphs
from cola_fed.federation.client import STATE_SESSION
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.protocol import CLEAR
from cola_fed.federation.server import build_strategy
from cola_fed.wire import public_bytes
from cola_fed.wire.identity import KnownServers

pytest.importorskip("sklearn")

VICTIM = 1001


def relay_on_hello(edit):
    """A message filter that rewrites the hello sent to node 1001."""
    def relay(node, msg):
        if node == VICTIM and msg.metadata.message_type == "query":
            return edit(msg)
        return msg
    return relay


@pytest.mark.parametrize("rewrite", sorted(RELAY_HELLO_REWRITES))
def test_a_rewritten_hello_fails_before_the_node_acts(rewrite, tmp_path, caplog):
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 2})
    strategy = build_strategy(config)
    known = tmp_path / "known-servers.json"
    KnownServers(known).check("default", public_bytes(strategy.identity))
    grid = LocalGrid(3, message_filter=relay_on_hello(RELAY_HELLO_REWRITES[rewrite]))
    grid.contexts[VICTIM].node_config.update({"known-servers": str(known),
                                              "graph-cache": str(tmp_path / "graphs"),
                                              "backend": "onnx"})
    client._cached_client_data.cache_clear()
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy.start(grid, num_rounds=2, timeout=3)
    assert "hello: refused node 1001 (try 1 of 3)" in caplog.text
    assert any(e in caplog.text for e in ("AuthenticationError", "UntrustedKeyError"))
    victim = grid.contexts[VICTIM]
    assert STATE_SESSION not in victim.state  # no session
    assert not (tmp_path / "graphs").exists()  # no graph stored, so none run
    # the victim's data was never read: only the two other nodes' partitions were loaded
    assert client._cached_client_data.cache_info().currsize == 2
    assert set(strategy.sessions) == {1000, 1002}  # the run went on without it
    assert all(s.rounds_trained == 2 for s in strategy.sessions.values())


def test_graphs_swapped_in_transit_are_refused_by_hash(tmp_path, caplog):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    evil = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])).SerializeToString()
    assert onnx.load_from_string(evil)

    def swap(msg):
        return replace_graphs(msg, {name: evil for name in msg.content["graphs"]})

    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1})
    strategy = build_strategy(config)
    grid = LocalGrid(2, message_filter=relay_on_hello(swap))
    grid.contexts[VICTIM].node_config.update({"graph-cache": str(tmp_path / "graphs"),
                                              "backend": "onnx"})
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy.start(grid, num_rounds=1, timeout=3)
    assert "does not match" in caplog.text
    assert set(strategy.sessions) == {1000}
    assert not list((tmp_path / "graphs").glob("*.onnx"))


def test_a_replayed_hello_does_not_reset_the_session():
    _, grid = run({}, nodes=2, rounds=2)
    hello = next(m for m in grid.delivered if m.metadata.message_type == "query"
                 and m.metadata.dst_node_id == 1000)
    before = dict(grid.contexts[1000].state[STATE_SESSION])
    [reply] = grid.send_and_receive([hello])
    assert reply.has_error() and "ReplayError" in reply.error.reason
    assert dict(grid.contexts[1000].state[STATE_SESSION]) == before


def test_a_hello_redirected_to_another_node_is_refused(caplog):
    hellos = {}

    def redirect(node, msg):
        if msg.metadata.message_type == "query":
            hellos[node] = msg.content
            if node == VICTIM:  # node 1001 receives node 1000's hello
                msg.content = hellos[1000]
        return msg

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, grid = run({}, nodes=2, rounds=1, message_filter=redirect)
    assert "reached node 1001" in caplog.text
    assert STATE_SESSION not in grid.contexts[VICTIM].state
    assert set(strategy.sessions) == {1000}


def test_a_server_asking_beyond_the_node_caps_is_refused(caplog):
    """Even an authentic plan is bounded by the node's own caps."""
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1, "data.interval": 3})
    strategy = build_strategy(config)
    grid = LocalGrid(2)
    grid.contexts[VICTIM].node_config["max-interval"] = 2
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy.start(grid, num_rounds=1, timeout=3)
    assert "above this node's max-interval = 2" in caplog.text
    assert set(strategy.sessions) == {1000}


def test_a_node_refuses_a_reply_larger_than_its_cap(caplog):
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1, "data.mode": "upload"})
    strategy = build_strategy(config)
    grid = LocalGrid(2)
    grid.contexts[VICTIM].node_config["max-payload-mb"] = 0.01
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy.start(grid, num_rounds=1, timeout=3)
    assert "above this node's max-payload-mb" in caplog.text
    assert STATE_SESSION not in grid.contexts[VICTIM].state


def test_a_changed_server_identity_is_refused_by_a_node_that_remembers(tmp_path, caplog,
                                                                       monkeypatch):
    """...before the node reads the plan: reading it may load an installed adapter plugin."""
    from cola_fed.federation import client

    read_by = []

    class Recording(client.HelloTranscript):
        @classmethod
        def decode(cls, blob):
            read_by.append(1)
            return super().decode(blob)

    monkeypatch.setattr(client, "HelloTranscript", Recording)
    known = tmp_path / "known-servers.json"
    KnownServers(known).check("default", public_bytes(Ed25519PrivateKey.generate()))
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1})
    strategy = build_strategy(config)
    grid = LocalGrid(2)
    grid.contexts[VICTIM].node_config["known-servers"] = str(known)
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy.start(grid, num_rounds=1, timeout=3)
    assert "UntrustedKeyError" in caplog.text and "cola-fed trust forget" in caplog.text
    assert set(strategy.sessions) == {1000}
    victim_reads = len(read_by)
    lone = LocalGrid(1)  # the victim alone: it must refuse without reading any plan
    lone.contexts[next(iter(lone.contexts))].node_config["known-servers"] = str(known)
    read_by.clear()
    build_strategy(config).start(lone, num_rounds=1, timeout=3)
    assert read_by == [] and victim_reads > 0


def test_relay_edits_of_train_messages_fail_for_that_message_alone(caplog):
    """A clear field added to a TRAIN order, or a node's reply replaced by another node's:
    refused; the next round trains normally and no step is lost or applied twice."""
    replies = {}

    def add_clear(node, msg):
        if node == VICTIM and msg.metadata.message_type == "train" and msg.metadata.group_id \
                == "1":
            msg.content[CLEAR] = ConfigRecord({"acknowledged": 0})
        return msg

    def swap_reply(node, reply):
        if reply.metadata.message_type == "train" and not reply.has_error():
            replies[node] = reply.content
            if node == 1000 and reply.metadata.group_id == "3":
                reply.content = replies[VICTIM]
        return reply

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        lossy, _ = run({}, nodes=2, rounds=4, message_filter=add_clear, reply_filter=swap_reply)
    clean, _ = run({}, nodes=2, rounds=3)
    assert "node 1001 (partition 1) failed" in caplog.text and "ProtocolError" in caplog.text
    assert "AuthenticationError" in caplog.text  # node 1000's swapped reply
    for node in (1000, VICTIM):
        assert lossy.sessions[node].rounds_trained == 3
        for layer, params in clean.sessions[node].adapters.items():
            for name, value in params.items():
                np.testing.assert_allclose(lossy.sessions[node].adapters[layer][name], value,
                                           rtol=0, atol=1e-6)


def test_replies_lost_several_rounds_in_a_row_lose_nothing():
    """A relay drops node 1001's replies in rounds 1 and 2: the node resumes each time from the
    state the server holds, and ends with the adapters of a clean run of its accepted steps."""
    def drop(node, reply):
        if node == VICTIM and reply.metadata.message_type == "train" and \
                reply.metadata.group_id in ("1", "2"):
            return None
        return reply

    lossy, _ = run({}, nodes=2, rounds=5, reply_filter=drop)
    clean, _ = run({}, nodes=2, rounds=3)
    assert lossy.sessions[VICTIM].rounds_trained == 3
    for layer, params in clean.sessions[VICTIM].adapters.items():
        for name, value in params.items():
            np.testing.assert_allclose(lossy.sessions[VICTIM].adapters[layer][name], value,
                                       rtol=0, atol=1e-6)


def test_a_reply_held_back_a_round_is_dropped_and_not_held_against_the_node(caplog):
    """A relay holds node 1001's authentic reply of each of rounds 1 to 3 and delivers it in
    place of the next round's: each is dropped, none counts against the node (one refusal
    would quarantine it here), and once the relay stops the node trains again."""
    held = {}

    def late(node, reply):
        if node != VICTIM or reply.metadata.message_type != "train" or reply.has_error() or \
                int(reply.metadata.group_id) > 4:
            return reply
        earlier, held["reply"] = held.get("reply"), reply.content
        if earlier is None:
            return None  # round 1's reply, held back
        reply.content = earlier  # the previous round's reply, in place of this round's
        return reply

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run({"strategy.max-failures": 1}, nodes=2, rounds=6, reply_filter=late)
    victim = strategy.sessions[VICTIM]
    assert not victim.quarantined and victim.failures == 0 and victim.last_error == ""
    assert victim.rounds_trained == 2  # rounds 5 and 6
    assert caplog.text.count("dropped, not counted against the node") == 3
    assert strategy.sessions[1000].rounds_trained == 6


def test_trust_on_first_use_learns_only_from_a_hello_fit_to_act_on(tmp_path):
    """A correctly signed hello meant for another node is refused, and its key not remembered."""
    known = tmp_path / "known-servers.json"
    hellos = {}

    def redirect(node, msg):
        if msg.metadata.message_type == "query":
            hellos[node] = msg.content
            if node == VICTIM:
                msg.content = hellos[1000]
        return msg

    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1})
    strategy = build_strategy(config)
    grid = LocalGrid(2, message_filter=redirect)
    grid.contexts[VICTIM].node_config["known-servers"] = str(known)
    strategy.start(grid, num_rounds=1, timeout=3)
    assert KnownServers(known).entries() == {}


def test_a_server_key_path_that_does_not_exist_is_an_error(tmp_path):
    from cola_fed.errors import ConfigError

    config = RunConfig.from_flat({**DIGITS, "wire.server-key": str(tmp_path / "typo.pem")})
    with pytest.raises(ConfigError, match=r"typo\.pem"):
        build_strategy(config)


def test_replayed_or_oversized_replies_are_refused_unopened_and_not_held_against_the_node(caplog):
    """A relay re-delivering a node's reply, or padding one to a gigabyte-scale size, gets it
    refused before decryption (the cap comes from the plan) and never quarantines the node."""
    seen = {}

    def relay(node, reply):
        if node != VICTIM or reply.metadata.message_type != "train" or reply.has_error():
            return reply
        rnd = reply.metadata.group_id
        if rnd == "1":
            seen["first"] = reply.content
        elif rnd in ("2", "3"):  # the round-1 reply again: replays
            reply.content = seen["first"]
        elif rnd == "4":  # a reply padded past any reply the plan allows
            from cola_fed.federation.protocol import SEALED
            from cola_fed.federation.records import blob_to_record, record_to_blob

            blob = bytes(record_to_blob(reply.content[SEALED]))
            reply.content[SEALED] = blob_to_record(blob + bytes(5_000_000))
        return reply

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run({"strategy.max-failures": 2}, nodes=2, rounds=6, reply_filter=relay)
    victim = strategy.sessions[VICTIM]
    assert not victim.quarantined and victim.rounds_trained == 3  # rounds 1, 5 and 6
    assert caplog.text.count("ReplayError") == 2 and "exceeds the cap" in caplog.text


def test_a_misspelt_node_config_key_is_refused_not_ignored(caplog):
    """``server_key_fingerprint`` (underscores) silently ignored would turn pinning off."""
    config = RunConfig.from_flat({**DIGITS, "num-server-rounds": 1})
    strategy = build_strategy(config)
    grid = LocalGrid(2)
    grid.contexts[VICTIM].node_config["server_key_fingerprint"] = "00" * 32
    grid.contexts[1000].node_config["some-other-app-key"] = 1  # not ours: left alone
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy.start(grid, num_rounds=1, timeout=3)
    assert "did you mean 'server-key-fingerprint'" in caplog.text
    assert set(strategy.sessions) == {1000}
    assert "server_key_fingerprint" in strategy.refused_at_hello[VICTIM]


def test_a_node_that_never_answers_its_hello_is_left_out(caplog):
    def silent(node, reply):
        return None if node == VICTIM and reply.metadata.message_type == "query" else reply

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, grid = run({}, nodes=3, rounds=2, reply_filter=silent)
    assert set(strategy.sessions) == {1000, 1002}
    assert all(s.rounds_trained == 2 for s in strategy.sessions.values())
    sent = [m.metadata.dst_node_id for m in grid.delivered if m.metadata.message_type == "train"]
    assert VICTIM not in sent  # never sampled without a session
