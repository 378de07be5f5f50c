"""Quiet, timed, coloured only on a terminal: cola-fed's log lines carry timestamps; no colour
codes reach output that is not a terminal (or with NO_COLOR); third-party noise is filtered
where it is made, by logger or by warning category and module, nothing else from those sources;
and the ONNX graphs are exported only when some node may use ONNX Runtime (``edge.graphs =
"auto"``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError

BIN = Path(sys.executable).parent
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (logging and warnings set up as a process of a run
    has them), its stderr and stdout captured: never a terminal."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=True)


def test_a_run_process_logs_with_timestamps_and_no_colour_under_no_color():
    """The apps module sets up the ServerApp's and ClientApp's logging (as in a run)."""
    code = ("import logging, cola_fed.apps\n"
            "logging.getLogger('cola_fed').info('round 1/2: 2 nodes (0 failed)')\n"
            "logging.getLogger('flwr').warning('a Flower warning')\n")
    plain = run_python(code, NO_COLOR="1").stderr
    assert "round 1/2: 2 nodes" in plain and "a Flower warning" in plain
    assert "\x1b[" not in plain
    assert all(TIMESTAMP.search(line) for line in plain.splitlines() if line.strip()), plain
    coloured = run_python(code, NO_COLOR="").stderr  # a user who runs flwr run on a terminal
    assert "\x1b[92mINFO" in coloured and TIMESTAMP.search(coloured)


def test_third_party_noise_is_filtered_at_its_source_and_nothing_else():
    code = """
import logging, warnings
from cola_fed.federation.flower_log import quiet_third_party
logging.basicConfig(format="%(name)s: %(message)s")
quiet_third_party()
onnx = logging.getLogger("torch.onnx._internal.exporter._registration")
onnx.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
onnx.warning("an exporter warning that matters")
def warn(message, module):
    warnings.warn_explicit(message, FutureWarning, filename=module + ".py", lineno=1,
                           module=module)
warn("Tip: In future versions of Ray, Ray will no longer override accelerator visible "
     "devices env var if num_gpus=0", "ray._private.worker")
warn("another Ray FutureWarning", "ray._private.worker")
warn("Tip: In future versions of Ray, Ray will no longer override accelerator", "mine")
"""
    err = run_python(code, PYTHONWARNINGS="default").stderr
    assert "torchvision is not installed" not in err
    assert "an exporter warning that matters" in err
    assert err.count("Tip: In future versions of Ray") == 1  # only the one from elsewhere
    assert "another Ray FutureWarning" in err


def test_edge_graphs_auto_exports_only_when_some_node_may_use_onnx_runtime():
    from cola_fed.edge.graphs import graphs_wanted

    def wanted(flat, deployment):
        return graphs_wanted(RunConfig.from_flat(flat), deployment=deployment)

    assert RunConfig().edge.graphs == "auto"
    assert not wanted({}, deployment=False)  # every simulated node has PyTorch
    assert not wanted({"edge.backends": "torch"}, deployment=False)
    assert wanted({"edge.backends": "onnx,torch"}, deployment=False)
    assert wanted({"edge.backends": "3:onnx"}, deployment=False)
    assert wanted({}, deployment=True)  # the server cannot know a deployed node's backend
    # the booleans of before still decide alone
    assert wanted({"edge.graphs": True}, deployment=False)
    assert not wanted({"edge.graphs": False, "edge.backends": "onnx"}, deployment=True)
    with pytest.raises(ConfigError, match=r'^edge\.graphs: expected true or false, or "auto", '
                                          r"got the string 'true'; write edge\.graphs = true"):
        RunConfig.from_flat({"edge.graphs": "true"})
    with pytest.raises(ConfigError, match=r"^edge\.graphs: .*got 1$"):
        RunConfig.from_flat({"edge.graphs": 1})


@pytest.mark.slow
def test_a_simulation_redirected_to_a_file_is_quiet_timed_and_colourless(tmp_path):
    """A real `cola-fed simulate` with its output in a file: half the nodes on ONNX Runtime, so
    the server exports graphs (torch.onnx's torchvision lines) and Ray starts (its
    FutureWarning), and Flower warns about its default SuperNodes; none of it shows."""
    config = tmp_path / "run.toml"
    config.write_text('num-server-rounds = 2\ntask.name = "digits"\ntask.batch-size = 32\n'
                      'task.eval-batches = 2\nadapter.kind = "lowrank"\nadapter.rank = 4\n'
                      'strategy.min-available-nodes = 2\nstrategy.evaluate-every = 1\n'
                      'edge.backends = "onnx,torch"\n')
    log = tmp_path / "log.txt"
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    with tempfile.TemporaryDirectory(prefix="cola-q-") as short, log.open("w") as sink:
        result = subprocess.run([str(BIN / "cola-fed"), "simulate", str(config), "--out",
                                 str(tmp_path / "out")], stdout=sink, stderr=subprocess.STDOUT,
                                env={**env, "TMPDIR": short}, timeout=900, check=False)
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "train-step graphs for ONNX nodes" in text  # the export ran
    assert "partition 0 joins on the onnx backend" in text
    assert "\x1b" not in text
    for noise in ("torchvision is not installed", "FutureWarning",
                  "default simulated SuperNodes changed"):
        assert noise not in text, noise
    rounds = [line for line in text.splitlines() if "round 1/2:" in line]
    assert rounds and all(TIMESTAMP.search(line) for line in rounds), rounds
