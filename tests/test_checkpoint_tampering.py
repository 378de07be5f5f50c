"""A checkpoint is the server's own state: read back as strictly as a node's reply, refused whole
(naming the file and the reason) when it fails, and never blamed on a node. A failure of the
server's own in a round stops the run with every result written, as does a run that trained
nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from federation_runs import DIGITS, run_with_state
from safetensors.numpy import load, save

from cola_fed.errors import ConfigError
from cola_fed.federation.adversary import hostile_node, scale
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.server import run_server

FAST = {"edge.graphs": False}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 2-node run of 2 rounds with its checkpoint, results and node states."""
    out = tmp_path_factory.mktemp("finished")
    run_with_state(out, 7, 2, 2, overrides=FAST)
    (out / "checkpoint" / ".lock").unlink()
    return out


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def contents(out: Path) -> dict[str, bytes]:
    """Every result and checkpoint file, by path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "node-state" not in p.parts and p.name != ".lock"}


def remove(prefix: str):
    return lambda t: {k: v for k, v in t.items() if not k.startswith(prefix)}


def set_adapter(value: float):
    def edit(t):
        t["adapters/fc1/A"] = np.full_like(t["adapters/fc1/A"], value)
        return t
    return edit


def with_train(t):
    return {**t, "train/x": t["pending/0/x"], "train/labels": t["pending/0/labels"]}


STATE_TAMPERING = {
    "nan adapters": (set_adapter(np.nan), "not finite"),
    "huge adapters": (set_adapter(1e30), "above strategy.max-adapter-norm"),
    "pending batches removed": (remove("pending/"), "0 pending batches, the plan needs 1"),
    "held-out batches removed": (remove("eval/1/"), "1 eval batches, the plan needs 2"),
    "a training split in streamed mode": (with_train, "holds a training split"),
    "float64 adapters": (lambda t: {**t, "adapters/fc1/A": t["adapters/fc1/A"].astype(
        np.float64)}, "not all float32"),
    "nan in a pending batch": (lambda t: {**t, "pending/0/x": np.full_like(t["pending/0/x"],
                                                                            np.nan)},
                               "expected finite"),
}


@pytest.mark.parametrize("tampering", sorted(STATE_TAMPERING))
def test_a_tampered_state_file_is_refused_whole_naming_it(finished, tmp_path, tampering):
    edit, reason = STATE_TAMPERING[tampering]
    out = copy_of(finished, tmp_path)
    [path] = (out / "checkpoint").glob("partition-0-v*.safetensors")
    path.write_bytes(save(edit(load(path.read_bytes()))))
    before = contents(out)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + re.escape(reason)):
        run_with_state(out, 8, 2, 3, resume=True, overrides=FAST)
    assert contents(out) == before  # refused whole: nothing taken, nothing overwritten


def edit_key(key, value):
    def edit(state):
        state[key] = value
        return state
    return edit


def edit_member(key, value):
    def edit(state):
        state["members"]["0"][key] = value
        return state
    return edit


ROUND_TAMPERING = {
    "rng of the wrong size": (lambda s: edit_key("rng", [3, s["rng"][1][:-1], None])(s),
                              "624 32-bit words"),
    "rng of another version": (lambda s: edit_key("rng", [2, *s["rng"][1:]])(s),
                               "version 2, expected 3"),
    "rng position out of range": (lambda s: edit_key("rng", [3, [*s["rng"][1][:-1], 625],
                                                            None])(s), "a position in"),
    "rng not a list": (edit_key("rng", "junk"), "not [version, state, gauss]"),
    "quarantined as a string": (edit_member("quarantined", "false"),
                                "'quarantined' is 'false'"),
    "negative failures": (edit_member("failures", -1), "expected an integer >= 0"),
    "rounds not a list": (edit_key("rounds", {"round": 1}), "not a list of round records"),
}


@pytest.mark.parametrize("tampering", sorted(ROUND_TAMPERING))
def test_a_tampered_round_file_is_refused_naming_it(finished, tmp_path, tampering):
    edit, reason = ROUND_TAMPERING[tampering]
    out = copy_of(finished, tmp_path)
    path = out / "checkpoint" / "round-2.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    before = contents(out)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + re.escape(reason)):
        run_with_state(out, 8, 2, 3, resume=True, overrides=FAST)
    assert contents(out) == before


def test_a_deeply_nested_round_file_is_an_error_naming_it(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    path = out / "checkpoint" / "round-2.json"
    path.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")  # not RecursionError
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*nests 100001 levels"):
        run_with_state(out, 8, 2, 3, resume=True, overrides=FAST)


def test_a_failure_of_the_server_stops_the_run_with_every_result_written(tmp_path,
                                                                         monkeypatch):
    from cola_fed.federation.checkpoint import Checkpoint

    real = Checkpoint.save

    def disk_full_at_round_two(self, round_, *args, **kwargs):
        if round_ == 2:
            raise OSError(28, "No space left on device")
        return real(self, round_, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "save", disk_full_at_round_two)
    strategy, _ = run_with_state(tmp_path, 7, 2, 4, overrides=FAST)  # no exception
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "the server failed, not a node" in strategy.stopped
    assert "No space left on device" in metrics["stopped-early"]
    assert metrics["last-round"] == 2 and [r["nodes"] for r in metrics["rounds"][1:]] == [2, 2]
    assert not any(n["last-error"] or n["quarantined"] for n in metrics["nodes"].values())
    assert (tmp_path / "checkpoint" / "LATEST").read_text() == "round-1.json"


def test_a_run_where_every_node_fails_every_round_is_stopped(tmp_path):
    """`cola-fed simulate` exits 1 when metrics.json says the run stopped."""
    hostile = hostile_node(scale(1e20))
    grid = LocalGrid(2, handlers={1000: hostile, 1001: hostile})
    strategy = run_server(grid, {**DIGITS, **FAST, "num-server-rounds": 2,
                                 "strategy.max-failures": 10, "output-dir": str(tmp_path)})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "no node trained in any of the 2 rounds" in strategy.stopped
    assert metrics["stopped-early"] == strategy.stopped and metrics["last-round"] == 2
