"""Real federations: a server killed and resumed, nodes that drop out, straggle, restart or
join late, and rounds that never hold every node's payload at once.

Nodes are real client handlers over ``LocalGrid`` (in-process, or a server process of its own
for the kill tests). With ``strategy.max-server-batch`` equal to the batch size every node's
pass is its own, so a node's adapters are bit-for-bit those of the same steps in any other run.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from federation_runs import DIGITS, run_with_state
from flwr.app import MessageType

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
from cola_fed.federation.checkpoint import Checkpoint
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.protocol import NodeSession
from cola_fed.federation.server import build_strategy, run_server
from cola_fed.federation.strategy import MAX_HELLO_TRIES
from cola_fed.wire import encode_adapter_state
from cola_fed.wire.identity import load_or_create_identity

SOLO = {"strategy.max-server-batch": 16}  # one node per pass: adapters exactly reproducible
HERE = Path(__file__).parent


def adapters_of(strategy) -> dict[int, dict]:
    return {p: s.adapters for p, s in strategy.members.items()}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for layer, params in want.items():
        for name, value in params.items():
            np.testing.assert_array_equal(got[layer][name], value, err_msg=f"{layer}/{name}")


def run_on(grid: LocalGrid, rounds: int, *, timeout: float = 0.5, **overrides):
    """``rounds`` rounds of digits on ``grid``, each node in a pass of its own."""
    config = RunConfig.from_flat({**DIGITS, **SOLO, "num-server-rounds": rounds,
                                  "strategy.timeout": timeout, **overrides})
    strategy = build_strategy(config)
    strategy.start(grid, num_rounds=rounds, timeout=timeout)
    return strategy


def snapshots(overrides: dict, nodes: int, rounds: int) -> dict[int, dict[int, dict]]:
    """A clean run's adapters of every partition after each round: {round: {partition: ...}}."""
    seen: dict[int, dict[int, dict]] = {}
    config = RunConfig.from_flat({**DIGITS, **overrides, "num-server-rounds": rounds})
    strategy = build_strategy(config)
    strategy.on_round = lambda s: seen.update({s.last_round: adapters_of(s)})
    strategy.start(LocalGrid(nodes), num_rounds=rounds, timeout=30)
    return seen


# --------------------------------------------------------------------------------------------
# the server: checkpoint, kill, resume


def server_process(out: Path, run_id: int, rounds: int, *, resume: bool = False,
                   delay: float = 0.0) -> subprocess.Popen:
    args = [sys.executable, str(HERE / "federation_runs.py"), str(out), str(run_id), "3",
            str(rounds), str(delay)] + (["--resume"] if resume else [])
    return subprocess.Popen(args, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def latest_round(out: Path) -> int:
    try:
        return int((out / "checkpoint" / "LATEST").read_text().split("-")[1].split(".")[0])
    except (OSError, IndexError, ValueError):
        return -1


def test_a_server_killed_mid_run_resumes_to_the_adapters_of_an_uninterrupted_run(tmp_path):
    rounds = 6
    clean, _ = run_with_state(tmp_path / "clean", 11, 3, rounds)

    out = tmp_path / "killed"
    server = server_process(out, 21, rounds, delay=0.15)
    deadline = time.monotonic() + 120
    while latest_round(out) < 2 and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(server.pid, signal.SIGKILL)  # mid-round, mid-write: wherever it is
    server.wait()
    killed_at = latest_round(out)
    assert 2 <= killed_at < rounds, f"the server was not killed mid-run ({killed_at})"

    resumed = server_process(out, 31, rounds, resume=True)  # a new run id, as a new flwr run
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["last-round"] == rounds and metrics["stopped-early"] is None
    assert [r["round"] for r in metrics["rounds"]] == list(range(rounds + 1))
    for partition, session in clean.members.items():
        assert metrics["nodes"][str(partition)]["rounds-trained"] == rounds
        got = (out / "adapters" / f"partition-{partition}.safetensors").read_bytes()
        assert got == encode_adapter_state(session.adapters), f"partition {partition}"


def test_a_server_resumes_from_a_checkpoint_rounds_older_than_the_nodes_states(tmp_path):
    """``checkpoint.every = 3``: the server dies in round 6, its checkpoint holds round 3, and
    the nodes have trained on since; they kept the state the checkpoint holds."""
    every = {"checkpoint.every": 3}
    clean, _ = run_with_state(tmp_path / "clean", 11, 2, 6, overrides=every)
    trains = []

    def dies_in_round_six(node, msg):
        if msg.metadata.message_type == MessageType.TRAIN:
            trains.append(node)
            if len(trains) == 11:
                raise KeyboardInterrupt  # the server process ends here
        return msg

    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run_with_state(out, 21, 2, 6, overrides=every, message_filter=dies_in_round_six)
    assert (out / "checkpoint" / "LATEST").read_text() == "round-3.json"
    resumed, _ = run_with_state(out, 31, 2, 6, overrides=every, resume=True)
    for partition, session in clean.members.items():
        assert_same(resumed.members[partition].adapters, session.adapters)
        assert resumed.members[partition].rounds_trained == 6


def test_results_and_checkpoints_are_written_every_round(tmp_path):
    strategy, _ = run_with_state(tmp_path, 7, 2, 3)
    checkpoint = tmp_path / "checkpoint"
    assert (checkpoint / "LATEST").read_text() == "round-3.json"
    names = sorted(p.name for p in checkpoint.iterdir() if p.name != ".lock")
    assert names == sorted(["LATEST", "round-3.json", "partition-0-v3.safetensors",
                            "partition-1-v3.safetensors"]), names  # older versions pruned
    assert all(p.stat().st_mode & 0o077 == 0 for p in checkpoint.iterdir())
    # no key material: neither the identity nor the run's exchange key, in any file
    from cola_fed.federation.node_store import raw_private
    from cola_fed.wire import exchange_key_for_run

    secrets = [raw_private(strategy.identity),
               exchange_key_for_run(strategy.identity, 7).private_bytes_raw()]
    for path in checkpoint.iterdir():
        data = path.read_bytes()
        assert not any(s in data for s in secrets) and not any(s.hex() in data.decode(
            "latin-1") for s in secrets), path


def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint_whole(tmp_path,
                                                                          monkeypatch):
    strategy, _ = run_with_state(tmp_path, 7, 2, 2)
    import cola_fed.federation.checkpoint as checkpoint_module

    real = checkpoint_module.write_private_file

    def dies_on_the_round_file(path, data, **kwargs):
        if Path(path).name.startswith("round-"):
            raise KeyboardInterrupt  # the process dies here
        return real(path, data, **kwargs)

    monkeypatch.setattr(checkpoint_module, "write_private_file", dies_on_the_round_file)
    strategy.members[0].version += 1
    with pytest.raises(KeyboardInterrupt):
        strategy._after_round(3)
    state, tensors = Checkpoint(tmp_path / "checkpoint").load()
    assert state["round"] == 2 and tensors(0)  # round 2, whole


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        run_with_state(tmp_path / "none", 7, 2, 2, resume=True)
    run_with_state(tmp_path, 7, 2, 2)
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in \['optimizer.lr'\]"):
        run_with_state(tmp_path, 8, 2, 3, resume=True, overrides={"optimizer.lr": 0.5})
    other = tmp_path / "other-identity.pem"
    load_or_create_identity(other)
    with pytest.raises(ConfigError, match="another server identity"):
        run_with_state(tmp_path, 8, 2, 3, resume=True,
                       overrides={"wire.server-key": str(other)})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["last-round"] == 2  # a refused resume overwrote nothing


def test_a_resumed_run_can_go_on_beyond_its_first_length(tmp_path):
    run_with_state(tmp_path, 7, 2, 2)
    strategy, _ = run_with_state(tmp_path, 8, 2, 4, resume=True)
    assert all(s.rounds_trained == 4 for s in strategy.members.values())
    want = snapshots({}, 2, 4)[4]
    for partition, adapters in adapters_of(strategy).items():
        for layer, params in want[partition].items():  # the default pass packs both nodes
            for name, value in params.items():
                np.testing.assert_allclose(adapters[layer][name], value, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# nodes: dropouts, stragglers, restarts, late joiners


def test_thirty_percent_dropouts_lose_no_adapter_and_every_node_follows_its_own_steps():
    rounds, nodes = 10, 6
    rng = random.Random(7)
    clean = snapshots(SOLO, nodes, rounds)

    def drop_out(node, msg):  # the node never gets it: its process is down
        return None if msg.metadata.message_type == MessageType.TRAIN and rng.random() < 0.15 \
            else msg

    def drop_back(node, reply):  # the node trained, but its reply is lost
        return None if reply.metadata.message_type == MessageType.TRAIN and rng.random() < 0.15 \
            else reply

    strategy = run_on(LocalGrid(nodes, message_filter=drop_out, reply_filter=drop_back),
                      rounds, timeout=0.3)
    assert strategy.stopped is None and len(strategy.members) == nodes
    trained = [s.rounds_trained for s in strategy.members.values()]
    assert sum(trained) < rounds * nodes * 0.85 and min(trained) > 0, trained
    assert sum(r["nodes"] for r in strategy.rounds[1:]) == sum(trained)
    assert sum(r["failed"] for r in strategy.rounds[1:]) > 0.2 * sum(trained)
    for partition, session in strategy.members.items():
        assert_same(session.adapters, clean[session.rounds_trained][partition])


def test_a_straggler_is_skipped_until_it_answers_in_time():
    rounds = 4
    clean = snapshots(SOLO, 2, rounds)
    grid = LocalGrid(2)
    trains = []

    def watch(node, msg):
        if msg.metadata.message_type == MessageType.TRAIN and node == 1001:
            trains.append(msg)  # slow in its first two rounds, then in time
            grid.delays[1001] = 5.0 if len(trains) <= 2 else 0.0
        return msg

    grid.message_filter = watch
    strategy = run_on(grid, rounds)
    assert [r["failed"] for r in strategy.rounds[1:]] == [1, 1, 0, 0]
    assert strategy.members[1].rounds_trained == rounds - 2
    assert_same(strategy.members[1].adapters, clean[rounds - 2][1])
    assert_same(strategy.members[0].adapters, clean[rounds][0])


def restart_after(grid: LocalGrid, node: int, trains: int, *, new_id: int | None = None,
                  node_config: dict | None = None) -> None:
    """Replace ``node``'s process (its context.state is lost) once it has had ``trains`` TRAIN
    messages: under ``new_id`` (a new SuperNode registration) or the same id."""
    seen = []
    previous = grid.message_filter

    def watch(dst, msg):
        if previous is not None:
            msg = previous(dst, msg)
        if msg is not None and msg.metadata.message_type == MessageType.TRAIN and dst == node:
            seen.append(1)
            if len(seen) == trains + 1:
                old = grid.disconnect(node)
                context = grid.connect(new_id or node, old.node_config["partition-id"],
                                       old.node_config["num-partitions"],
                                       **(node_config or {}))
                if new_id is None:
                    return msg  # the same node id: the message reaches the new process
                del context
                return None  # the old id is gone: the message is lost
        return msg

    grid.message_filter = watch


@pytest.mark.parametrize("new_id", [None, 2001], ids=["same-node-id", "new-node-id"])
def test_a_restarted_node_goes_on_from_its_state_dir(tmp_path, new_id):
    rounds = 5
    clean = snapshots(SOLO, 2, rounds)
    grid = LocalGrid(2)
    state = {"state-dir": str(tmp_path / "node-1")}
    grid.contexts[1001].node_config.update(state)
    restart_after(grid, 1001, 2, new_id=new_id, node_config=state)
    strategy = run_on(grid, rounds)
    session = strategy.members[1]
    assert session.node_id == (new_id or 1001)
    lost = 0 if new_id is None else 1  # the message to the old id, and the round it joined in
    assert session.rounds_trained == rounds - lost
    assert_same(session.adapters, clean[rounds - lost][1])
    assert oct((tmp_path / "node-1").stat().st_mode & 0o777) == "0o700"
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "node-1").iterdir())


def test_a_restarted_node_without_its_state_cannot_take_its_partition_back(tmp_path):
    grid = LocalGrid(2)
    restart_after(grid, 1001, 1, new_id=2001)  # no state-dir: a new identity
    strategy = run_on(grid, 3)
    assert "held by another node identity" in strategy.refused_at_hello[2001]
    assert strategy.members[1].node_id == 1001 and strategy.members[1].rounds_trained == 1


def test_a_node_that_connects_late_joins_at_the_next_round():
    rounds = 4
    clean = snapshots(SOLO, 3, rounds)
    grid = LocalGrid(2)
    for context in grid.contexts.values():
        context.node_config["num-partitions"] = 3
    seen = []

    def watch(node, msg):
        if msg.metadata.message_type == MessageType.TRAIN:
            seen.append(node)
            if len(seen) == 2:  # after round 1
                grid.connect(3000, 2, 3)
        return msg

    grid.message_filter = watch
    strategy = run_on(grid, rounds, **{"strategy.max-joins-per-round": 1})
    late = strategy.members[2]
    assert late.node_id == 3000 and late.rounds_trained == rounds - 1
    assert [r["nodes"] for r in strategy.rounds[1:]] == [2, 3, 3, 3]
    assert_same(late.adapters, clean[rounds - 1][2])


def test_too_few_nodes_for_too_long_stops_the_run_with_every_result_written(tmp_path):
    grid = LocalGrid(2)
    seen = []

    def watch(node, msg):
        if msg.metadata.message_type == MessageType.TRAIN:
            seen.append(node)
            if len(seen) == 4:  # after round 2, both nodes go away
                grid.disconnect(1000), grid.disconnect(1001)
                return None
        return msg

    grid.message_filter = watch
    strategy = run_server(grid, {**DIGITS, "num-server-rounds": 6, "output-dir": str(tmp_path),
                                 "strategy.wait-for-nodes": 1.0, "strategy.timeout": 1.0})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "after waiting 1 s (strategy.wait-for-nodes)" in metrics["stopped-early"]
    assert metrics["last-round"] == 2 and strategy.last_round == 2
    assert [n["rounds-trained"] for n in metrics["nodes"].values()] == [2, 1]
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [
        "partition-0.safetensors", "partition-1.safetensors"]
    assert (tmp_path / "checkpoint" / "LATEST").read_text() == "round-2.json"


# --------------------------------------------------------------------------------------------
# bounded server memory


class Recorder(LocalGrid):
    """A LocalGrid that logs when payloads are computed, sent and answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list[str] = []
        self.outstanding: set[str] = set()
        self.most_outstanding = 0

    def push_messages(self, messages):
        ids = list(super().push_messages(messages))
        for message_id, message in zip(ids, messages, strict=True):
            if message.metadata.message_type == MessageType.TRAIN:
                self.events.append("send")
                self.outstanding.add(message_id)
        self.most_outstanding = max(self.most_outstanding, len(self.outstanding))
        return ids

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        self.outstanding -= {r.metadata.reply_to_message_id for r in replies}
        return replies


def recorded_run(nodes: int, overrides: dict, **grid_options) -> Recorder:
    grid = Recorder(nodes, **grid_options)
    config = RunConfig.from_flat({**DIGITS, **overrides, "num-server-rounds": 1})
    strategy = build_strategy(config)
    compute = strategy.engine.compute

    def logged(batches, *args, **kwargs):
        grid.events.append(f"pass of {len(batches)}")
        return compute(batches, *args, **kwargs)

    strategy.engine.compute = logged
    strategy.start(grid, num_rounds=1, timeout=5)
    assert all(s.rounds_trained == 1 for s in strategy.members.values())
    return grid


def test_each_payload_is_sent_as_soon_as_its_group_pass_is_done():
    grid = recorded_run(4, {"strategy.max-server-batch": 32})  # two nodes of 16 a pass
    train = grid.events[grid.events.index("send") - 1:]
    assert train == ["pass of 2", "send", "send", "pass of 2", "send", "send"]


def test_in_flight_payloads_stay_under_the_cap():
    every = recorded_run(4, SOLO, delays={n: 1.0 for n in range(1000, 1004)})
    assert every.most_outstanding == 4  # nothing answers before all are sent
    capped = recorded_run(4, {**SOLO, "strategy.max-inflight-mb": 0.001},
                          delays={n: 0.1 for n in range(1000, 1004)})
    assert capped.most_outstanding == 1  # each waits for the previous answer


def test_a_hello_replayed_to_a_restarted_node_resets_nothing(tmp_path):
    from flwr.app import Context, RecordDict

    from cola_fed.errors import ReplayError
    from cola_fed.federation.client import handle_hello

    grid = LocalGrid(1)
    grid.contexts[1000].node_config["state-dir"] = str(tmp_path / "node")
    strategy = build_strategy(RunConfig.from_flat({**DIGITS, "num-server-rounds": 2}))
    strategy.start(grid, num_rounds=2, timeout=3)
    hello = next(m for m in grid.delivered if m.metadata.message_type == MessageType.QUERY)
    kept = {p.name: p.read_bytes() for p in (tmp_path / "node").iterdir()}
    restarted = Context(grid.run_id, 1000, dict(grid.contexts[1000].node_config),
                        RecordDict(), {})
    with pytest.raises(ReplayError):
        handle_hello(hello, restarted)
    assert {p.name: p.read_bytes() for p in (tmp_path / "node").iterdir()} == kept
    assert not restarted.state  # nothing taken in either


def test_one_server_at_a_time_and_a_fresh_run_sets_the_old_checkpoint_aside(tmp_path):
    run_with_state(tmp_path, 7, 2, 2)
    held = Checkpoint(tmp_path / "checkpoint")
    held.lock()  # a server still writing the folder (one a killed simulation left going)
    with pytest.raises(ConfigError, match="another server is writing"):
        run_with_state(tmp_path, 8, 2, 3, resume=True)
    held.unlock()
    run_with_state(tmp_path, 9, 2, 1)  # afresh, without resume
    assert (tmp_path / "checkpoint.previous" / "LATEST").read_text() == "round-2.json"
    assert (tmp_path / "checkpoint" / "LATEST").read_text() == "round-1.json"
    state, _ = Checkpoint(tmp_path / "checkpoint.previous").load()
    assert state["round"] == 2  # whole: move it back to resume that run


# --------------------------------------------------------------------------------------------
# what an attacker (or bad luck) does to nodes coming and going


def test_a_node_that_lost_the_state_the_server_holds_is_taken_at_the_state_it_has(tmp_path):
    """A phone that answers its hello and is gone before every TRAIN order, again and again
    (a new node id each time): its hello states push out the state the server holds. The
    server sees it in the claim and takes the node's own state: the partition trains again."""
    grid = LocalGrid(2)
    state = {"state-dir": str(tmp_path / "phone")}
    grid.contexts[1001].node_config.update(state)
    current, churns = [1001], []

    def churn(node, msg):
        if node == current[0] and msg.metadata.message_type == MessageType.TRAIN and (
                len(churns) < NodeSession.MAX_STATES + 2):
            churns.append(node)
            grid.disconnect(node)
            current[0] = 5000 + len(churns)
            grid.connect(current[0], 1, 2, **state)
            return None
        return msg

    grid.message_filter = churn
    strategy = run_on(grid, NodeSession.MAX_STATES + 6, timeout=0.2)
    phone = strategy.members[1]
    assert len(churns) == NodeSession.MAX_STATES + 2 and phone.node_id == current[0]
    assert phone.rounds_trained >= 2 and not phone.quarantined


def test_node_ids_that_never_answer_cannot_keep_a_newcomer_out():
    grid = LocalGrid(2)
    for i in range(16):  # 16 ids whose hellos are never answered
        grid.connect(7000 + i, 0, 2)
    seen = []

    def watch(node, msg):
        if 7000 <= node < 7016:
            return None
        if msg.metadata.message_type == MessageType.TRAIN:
            seen.append(node)
            if len(seen) == 2:
                grid.connect(9000, 2, 3)  # an honest newcomer, after round 1
        return msg

    for node in (1000, 1001):
        grid.contexts[node].node_config["num-partitions"] = 3
    grid.message_filter = watch
    strategy = run_on(grid, 5, timeout=0.2, **{"strategy.max-joins-per-round": 16})
    assert strategy.members[2].node_id == 9000 and strategy.members[2].rounds_trained >= 3
    asked = collections.Counter(m.metadata.dst_node_id for m in grid.delivered)
    assert all(asked[7000 + i] <= MAX_HELLO_TRIES for i in range(16))  # then left out


def test_a_tampered_hello_reply_costs_a_try_not_the_run():
    tampered = []

    def relay(node, reply):
        if node == 1001 and reply.metadata.message_type == MessageType.QUERY and not tampered:
            from cola_fed.federation.protocol import SEALED
            from cola_fed.federation.records import blob_to_record, record_to_blob

            blob = bytearray(record_to_blob(reply.content[SEALED]))
            blob[-1] ^= 1
            reply.content[SEALED] = blob_to_record(bytes(blob))
            tampered.append(node)
        return reply

    strategy = run_on(LocalGrid(2, reply_filter=relay), 3)
    assert tampered and strategy.members[1].node_id == 1001
    assert strategy.members[1].rounds_trained == 3  # asked again at round 1, joined at once
    assert strategy.refused_at_hello == {}


def test_a_node_that_never_trains_is_asked_less_often():
    sampled = []

    def silent(node, msg):
        if msg.metadata.message_type == MessageType.TRAIN and node == 1001:
            sampled.append(msg.metadata.group_id)
            return None
        return msg

    strategy = run_on(LocalGrid(2, message_filter=silent), 12, timeout=0.1)
    assert strategy.members[0].rounds_trained == 12
    assert len(sampled) < 9 and strategy.members[1].missed > 3  # not every round held up


def test_a_damaged_checkpoint_is_refused_and_overwrites_nothing(tmp_path):
    run_with_state(tmp_path, 7, 2, 2)
    metrics = (tmp_path / "metrics.json").read_bytes()
    adapters = {p.name: p.read_bytes() for p in (tmp_path / "adapters").iterdir()}
    [state_file] = (tmp_path / "checkpoint").glob("partition-1-*.safetensors")
    state_file.write_bytes(state_file.read_bytes()[:-40])  # a write cut short
    with pytest.raises(ConfigError, match="is damaged"):
        run_with_state(tmp_path, 8, 2, 3, resume=True)
    assert (tmp_path / "metrics.json").read_bytes() == metrics
    assert {p.name: p.read_bytes() for p in (tmp_path / "adapters").iterdir()} == adapters


def test_files_a_crash_left_behind_are_not_taken_for_checkpoint_states(tmp_path):
    run_with_state(tmp_path, 7, 2, 2)
    stray = tmp_path / "checkpoint" / "partition-0-v3.safetensors"  # the next version's name
    stray.write_bytes(b"from a run that died before its round file")
    Checkpoint(tmp_path / "checkpoint").load()
    assert not stray.exists()


def test_a_resumed_server_whose_clock_is_behind_is_not_taken_for_a_replay(tmp_path,
                                                                         monkeypatch):
    import cola_fed.federation.strategy as strategy_module

    run_with_state(tmp_path, 7, 2, 2)
    real = strategy_module.time.time_ns
    monkeypatch.setattr(strategy_module.time, "time_ns", lambda: real() - 3_600 * 10**9)
    strategy, _ = run_with_state(tmp_path, 8, 2, 3, resume=True)
    assert strategy.refused_at_hello == {} and all(
        s.rounds_trained == 3 for s in strategy.members.values())


@pytest.mark.parametrize("nodes", [2, 1])
def test_a_target_the_model_never_calls_stops_the_run_not_the_nodes(monkeypatch, caplog, nodes):
    """Every node's batch failing on the model's own structure is the run's configuration: the
    run stops with the reason, and no node is blamed. One node alone never stops a run."""
    import logging

    import torch
    from federation_runs import run

    from cola_fed.tasks.digits import DigitsTask

    build = DigitsTask.build_model

    def with_a_spare_layer(self):
        model = build(self)
        model.spare = torch.nn.Linear(4, 4)  # adapted, but forward never calls it
        return model

    monkeypatch.setattr(DigitsTask, "build_model", with_a_spare_layer)
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run({"adapter.targets": "fc1,spare", "strategy.min-train-nodes": 1},
                          nodes=nodes, rounds=2)
    if nodes == 2:
        assert "was not called" in strategy.stopped and "not the nodes" in strategy.stopped
        assert strategy.last_round == 0
        assert not any(s.failures for s in strategy.sessions.values())
    else:  # the lone node is blamed, and the run goes on to its end: which then says that
        # no node trained in any round (a run that trained nothing does not pass for done)
        assert strategy.last_round == 2 and "its batch breaks the pass" in caplog.text
        assert strategy.stopped.startswith("no node trained in any of the 2 rounds")


def test_refused_ids_that_leave_are_forgotten():
    """Ids that never answer their hellos, then leave the SuperLink, leave nothing behind: a
    flood of registrations that come and go must not grow the server's memory for the run."""
    grid = LocalGrid(2)
    for i in range(8):
        grid.connect(7000 + i, 0, 2)

    def watch(node, msg):
        if 7000 <= node < 7008:
            return None
        if msg.metadata.message_type == MessageType.TRAIN and msg.metadata.group_id == "4":
            for i in range(8):  # gone by round 4, after their tries ran out
                if 7000 + i in grid.contexts:
                    grid.disconnect(7000 + i)
        return msg

    grid.message_filter = watch
    strategy = run_on(grid, 6, timeout=0.2)
    assert strategy.members[0].rounds_trained == 6
    flood = set(range(7000, 7008))
    assert not flood & (strategy._excluded | set(strategy._hello_tries) | set(strategy._hellos))
