"""`python -m benchmarks.js_node` runs end to end on tiny settings and writes valid JSON.

The figures themselves are not checked (they depend on the machine); the test pins that both
nodes trained every round through the real strategy, and that the result has what
docs/benchmarks.md reports: peak RSS, step and fit medians of each node, and the ratios.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import common, js_node

pytestmark = pytest.mark.slow


@pytest.fixture
def result(tmp_path, monkeypatch):
    if not (js_node.ROOT / "js" / "packages" / "node" / "dist" / "app.js").exists():
        pytest.fail("the JavaScript node is not built: run `make js` first")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    js_node.main(["--tasks", "digits", "--rounds", "2", "--rows", "120", "--out", "smoke"])
    return json.loads((tmp_path / "smoke.json").read_text())


def test_it_writes_both_nodes_figures_and_the_ratios(result):
    assert result["benchmark"] == "smoke"
    assert result["targets"] == {"js_peak_rss_mb": 100.0, "step_ratio": 1.5}
    digits = result["tasks"]["digits"]
    assert digits["rounds"] == 2
    for node in ("python_onnx_node", "js_node"):
        row = digits[node]
        assert len(row["handle_s"]) == 2  # one step per round
        assert 20 < row["peak_rss_mb"] < 2000
        assert 0 < row["fit_median_s"] <= row["handle_median_s"]
        assert 0 <= row["session_median_s"] <= row["fit_median_s"]
    assert digits["js_node"]["message_median_s"] >= digits["js_node"]["handle_median_s"]
    ratios = digits["js_over_python"]
    assert set(ratios) >= {"peak_rss", "step", "step_paired", "fit", "fit_paired"}
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert digits["meets"]["step_ratio"] == (ratios["step"] <= 1.5)
