"""The JavaScript node (js/packages/node) against a real Flower 1.42 SuperLink on loopback.

A tiny ServerApp (tests/apps/fleet_echo) sends the node one "query" holding a ConfigRecord of
every value type, a MetricRecord and an ArrayRecord whose array spans two 5 MiB chunks, and one
"query.fail". The node runs the SuperNode loop of `cola-fed-node` with an echo handler (the test
fixture js/packages/node/test/fixtures/echo-node.ts, same flags and loop as the shipped CLI): the
echo must come back bit for bit with its types, and the failure as Flower's ClientApp-exception
error. Insecure, with TLS, and with TLS plus SuperNode authentication; each run ends with SIGINT
to the node, which must deactivate (the SuperLink logs it) and exit 0.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess

import pytest
from flower_processes import ECHO_NODE, JS_NODE_BIN, ROOT, FlowerProcesses

APP = ROOT / "tests" / "apps" / "fleet_echo"
NODE_FIXTURES = ROOT / "js" / "packages" / "node" / "test" / "fixtures"
NODE_CONFIG = "partition-id=1 num-partitions=2 state-dir='/tmp/a dir' ratio=0.25 debug=true"


def load_vector_script():
    spec = importlib.util.spec_from_file_location(
        "node_config_vectors", NODE_FIXTURES / "node_config_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_node_config_vectors_are_current():
    """The JS test compares with a committed file made by Flower's own parser: it is current."""
    committed = json.loads((NODE_FIXTURES / "node-config.json").read_text())
    assert committed == json.loads(json.dumps(load_vector_script().vectors()))


def need_js() -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    assert ECHO_NODE.exists(), f"{ECHO_NODE} is missing: build the JavaScript node (make js)"


def test_the_cli_prints_help_and_refuses_bad_flags_with_exit_code_2():
    need_js()
    assert JS_NODE_BIN.exists(), "js/node_modules/.bin/cola-fed-node is missing: run make js"
    shown = subprocess.run([str(JS_NODE_BIN), "--help"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert shown.returncode == 0 and "--superlink HOST:PORT" in shown.stdout
    for bad in (["--bogus"], ["--superlink", "http://x:1"], ["--max-retries", "x"],
                ["--insecure", "--root-certificates", "ca.pem"],
                ["--insecure", "--node-config", "k=[1,2]"],
                ["--heartbeat-interval", "5"]):
        result = subprocess.run([str(JS_NODE_BIN), *bad], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 2, (bad, result.stderr)
        assert "error:" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["insecure", "tls-node-auth"])  # (TLS is part of the second)
def test_js_node_serves_a_flower_app_and_stops_cleanly(tmp_path, mode):
    need_js()
    with FlowerProcesses(tmp_path) as procs:
        link = procs.start_superlink(tls=mode != "insecure", node_auth=mode == "tls-node-auth")
        key = procs.register_node_key("node-key") if link.node_auth else None
        node = procs.start_js_node("js-node", script=ECHO_NODE, key=key, node_config=NODE_CONFIG)
        node_log = procs.wait_for_log("js-node", "SuperNode ID:", proc=node)
        node_id = int(re.search(r"SuperNode ID: (\d+)", node_log).group(1))

        out = tmp_path / "result.json"
        procs.flwr_run(APP, {"out": str(out)})
        assert out.exists(), procs.log("js-node")[-3000:]
        result = json.loads(out.read_text())

        # SIGINT: the node deactivates (and, when it registered itself, unregisters), exit 0.
        assert procs.interrupt(node) == 0, procs.log("js-node")[-3000:]
        node_log = procs.log("js-node")
        assert f"Deactivated node {node_id}" in node_log
        assert (f"Unregistered node {node_id}" in node_log) == (not link.node_auth)
        link_log = procs.log("superlink")
        assert f"Deactivated node_id={node_id}" in link_log

    assert result["node-id"] == node_id and result["replies"] == 2
    echo = result["echo"]
    assert "error" not in echo, echo
    assert echo["reply-src"] == node_id
    assert echo["config-back"] == echo["config-sent"]  # every value, with its Python type
    assert echo["metrics-back"] == echo["metrics-sent"]
    assert echo["big-equal"] and echo["big-dtype"] == "float32"
    assert echo["big-bytes"] > 5 * 2**20  # more than one ArrayChunk
    assert echo["small-equal"]
    context = echo["context"]
    assert context["node-id"] == ["int", str(node_id)]
    assert context["node-config.partition-id"] == ["int", "1"]
    assert context["node-config.state-dir"] == ["str", repr("/tmp/a dir")]
    assert context["node-config.ratio"] == ["float", "0.25"]
    assert context["node-config.debug"] == ["bool", "True"]
    fail = result["fail"]
    assert fail["has-error"] and fail["code"] == 2  # ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert fail["reason"] == "<class 'RangeError'>:<'echo app asked to fail'>"
    assert "Sent successfully" in node_log
