"""A SuperNode SIGKILLed mid-run and started again with its state dir (issue 23, item 2).

One real deployment on loopback (flower-superlink, two flower-supernodes, `flwr run`), digits
task, 6 rounds, small batches. After round 1, partition 1's SuperNode is killed
(no goodbye to the SuperLink) and started again with the same ``state-dir``. What the server
must say and do:

(a) one WARNING that names the lost node id, its partition and the reason, not one per round
    it stays lost: a timeout (``strategy.timeout``), or "unavailable" when the SuperLink, having
    seen no heartbeat from the node for 2 x 30 s, answers for it first;
(b) a line saying the partition is back, on its node id (a new one, or its old one);
(c) the node trains again within two rounds of answering its hello, and in every round after.

Insecure (no SuperNode authentication), the restarted SuperNode gets a new node id, so the
server sends it a hello. With TLS and SuperNode authentication (what docs/deployment.md
recommends), Flower ties the node id to the registered key: the SuperLink refuses to activate
the key again while the killed process is still online to it (``[code: 2004] Failed to activate
SuperNode``, exit code 305), so the test restarts it every 5 s as a supervisor would, and the
node comes back with its old node id and no hello.

The test watches the run as it goes: after every round it reads ``metrics.json`` (written per
round) for partition 1's ``rounds-trained``, and it notes the round in progress when the
restarted SuperNode logs its answer to the hello. The timeline (seconds from the kill) is in
every failure message.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from flower_processes import BIN, FlowerProcesses
from test_deployment import ROOT, node_id

from cola_fed.federation.simulate import free_port

pytestmark = pytest.mark.slow

ROUNDS = 6
TIMEOUT = 120.0  # strategy.timeout: also the hello's time to live (ClientApps start
# slowly on a loaded machine); a killed node costs its round no more than Flower's heartbeat
# expiry (at most 60 s), when the SuperLink answers for it


def start_node(procs: FlowerProcesses, name: str, node_config: str, home: str,
               key: Path | None = None) -> subprocess.Popen:
    """flower-supernode against the test's SuperLink, with FLWR_HOME ``home`` (kept when the
    node restarts, as its state dir is)."""
    link = procs.superlink
    args = [str(BIN / "flower-supernode"), "--superlink", link.address,
            *link.node_security_args(), "--port", str(free_port()), "--node-config", node_config]
    if key is not None:
        args += ["--auth-supernode-private-key", str(key)]
    return procs.start(name, args, home=home)


def read_metrics(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
        return None


@pytest.mark.parametrize("secure", [True], ids=["tls-and-node-auth"])
def test_a_killed_supernode_restarted_with_its_state_dir_trains_again(tmp_path, secure):
    """With SuperNode authentication (what docs/deployment.md recommends) Flower gives the
    restarted SuperNode its old node id back, once the SuperLink has seen the old process's
    heartbeat expire: it gets no hello, and must be sampled again at once. (Without
    authentication it gets a new id and a hello: run with ``secure=False`` by hand; the suite
    covers that path on the in-process grid, tests/test_failures_named.py, to stay within its
    time budget.)"""
    out = tmp_path / "out"
    config = {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 1,
              "edge.graphs": False, "num-server-rounds": ROUNDS,
              "strategy.min-available-nodes": 2, "strategy.timeout": TIMEOUT,
              "strategy.wait-for-nodes": 120.0, "output-dir": str(out)}
    nodes = [f'partition-id={i} num-partitions=2 state-dir="{tmp_path / f"state{i}"}"'
             for i in range(2)]
    timeline: list[str] = []
    trained: dict[int, int] = {}  # round -> partition 1's rounds-trained after it
    with FlowerProcesses(tmp_path) as procs:
        procs.start_superlink(tls=secure, node_auth=secure)
        keys = [procs.register_node_key(f"auth{i}") if secure else None for i in range(2)]
        started = [start_node(procs, f"node{i}", nodes[i], f"node{i}", keys[i])
                   for i in range(2)]
        run = procs.start_flwr_run(ROOT, config)
        while (read_metrics(out / "metrics.json") or {"last-round": 0})["last-round"] < 1:
            assert run.poll() is None, procs.log("run")[-3000:]
            time.sleep(0.2)
        trained[1] = read_metrics(out / "metrics.json")["nodes"]["1"]["rounds-trained"]
        killed = time.monotonic()
        procs.kill(started[1])  # no goodbye: the SuperLink keeps it online a while
        restarted = start_node(procs, "node1-restarted", nodes[1], "node1", keys[1])
        tries = 1

        def note(what: str) -> None:
            timeline.append(f"{time.monotonic() - killed:6.1f} s  {what}")

        note("node1 killed and started again")
        answered_in = None  # the round in progress when the restarted node answered a hello
        connected = False
        last = 1
        deadline = time.monotonic() + 600
        while run.poll() is None and time.monotonic() < deadline:
            metrics = read_metrics(out / "metrics.json") or {"last-round": last}
            if metrics["last-round"] > last:
                last = metrics["last-round"]
                trained[last] = metrics["nodes"]["1"]["rounds-trained"]
                note(f"round {last} done; partition 1 trained {trained[last]} rounds")
            if not connected and restarted.poll() is not None:
                # with SuperNode authentication the SuperLink refuses to activate a key whose
                # node is still online to it (until that node's heartbeat expires), and
                # flower-supernode exits (305): started again, as a supervisor would
                note(f"the restarted SuperNode exited ({restarted.returncode}): "
                     + procs.log(f"node1-restarted{tries}" if tries > 1 else "node1-restarted"
                                 ).split("Failed to", 1)[-1].split("\n", 1)[0])
                time.sleep(5)
                tries += 1
                restarted = start_node(procs, f"node1-restarted{tries}", nodes[1], "node1",
                                       keys[1])
            log_name = f"node1-restarted{tries}" if tries > 1 else "node1-restarted"
            restarted_log = procs.log(log_name)
            if not connected and "SuperNode ID:" in restarted_log:
                connected = True
                note(f"the restarted node connected, try {tries} (round {last + 1} runs)")
            if answered_in is None and "goes on from its state" in restarted_log:
                answered_in = last + 1
                note(f"the restarted node answered its hello (round {answered_in} runs)")
            time.sleep(0.2)
        note(f"flwr run exited with {run.poll()}")
        final = read_metrics(out / "metrics.json")
        log = procs.log("run")
        old_id, new_id = node_id(procs.log("node1")), node_id(procs.log(log_name))

    story = "\n".join(timeline) + "\n--- server log ---\n" + log[-6000:]
    assert final is not None and final["last-round"] == ROUNDS, story
    assert (new_id == old_id) is secure  # Flower's node id follows a registered key

    # (a) the loss is named once: node id, partition, reason
    lost = [line for line in log.splitlines()
            if "WARNING" in line and f"node {old_id}" in line and "partition 1" in line]
    assert len(lost) == 1, f"expected one WARNING naming node {old_id}, got {lost}\n{story}"
    assert re.search(r"time(d)?[ -]?out|unavailable", lost[0], re.IGNORECASE), lost[0]

    # (b) its return is logged, with its node id
    back = [line for line in log.splitlines()
            if "partition 1" in line and "back" in line and f"node {new_id}" in line]
    assert back, f"no line says partition 1 is back on node {new_id}\n{story}"

    # (c) it trains again within two rounds of answering its hello (of reconnecting, where
    # no hello is needed), and in every round after
    since = answered_in
    if since is None and secure:
        since = next(int(t.split("round ")[1].split(" ")[0]) for t in timeline
                     if "connected" in t)
    assert since is not None, f"the restarted node never answered a hello\n{story}"
    trained_in = [r for r in range(2, ROUNDS + 1)
                  if trained.get(r, 0) > trained.get(r - 1, trained[1])]
    assert trained_in, f"partition 1 never trained again after the restart\n{story}"
    assert trained_in[0] <= since + 2, f"trained again only in round {trained_in[0]}, " \
        f"back in round {since}\n{story}"
    assert trained_in == list(range(trained_in[0], ROUNDS + 1)), story
    assert final["nodes"]["1"]["rounds-trained"] == trained[1] + len(trained_in), story
