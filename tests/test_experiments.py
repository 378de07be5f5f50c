"""The experiment runner: every experiment file loads, a smoke run of every arm agrees where the
mathematics says it must, the verdict rule is the documented one, and every figure of
docs/results.md's experiment tables comes from a committed results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cola_fed.errors import ConfigError
from cola_fed.experiments.config import ARMS, ExperimentConfig
from cola_fed.experiments.report import markdown, section_of, verdict

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_file_loads_in_full_and_smoke(path):
    for smoke in (False, True):
        config = ExperimentConfig.load(path, smoke=smoke)
        assert config.name == path.stem and set(config.arms) <= set(ARMS)


def test_a_bad_experiment_file_is_refused_with_the_reason(tmp_path):
    good = (ROOT / "experiments" / "digits.toml").read_text()
    cases = {
        "unknown key": (good.replace("nodes = 4", "nodez = 4"), "unknown \\[experiment\\] keys"),
        "unknown arm": (good.replace("lr-sweep", 'arms = ["peft", "cola-col"]\nlr-sweep'),
                        "arms must be"),
        "no test set": (good.replace('"task.server-test-size" = 300', ""), "server-held"),
        "bad run config": (good.replace('"adapter.rank" = 8', '"adapter.rank" = -1'),
                           "adapter.rank"),
        "no rounds": (good.replace("rounds = 40", "rounds = 0"), "rounds must be"),
        "seeds not a list": (good.replace("seeds = [0, 1, 2]", "seeds = 5"), "must be a list"),
        "a boolean seed": (good.replace("seeds = [0, 1, 2]", "seeds = [true]"), "seeds must"),
    }
    for name, (text, match) in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            ExperimentConfig.load(path)
            pytest.fail(f"{name}: accepted")
    with pytest.raises(ConfigError, match="known in"):
        ExperimentConfig.load("no-such-experiment")


def test_the_verdict_rule():
    base = {"arm": "fedavg-lora", "partition": "iid", "accuracy": 0.80, "accuracy-std": 0.02}

    def against(accuracy):
        ours = {"arm": "cola-col", "partition": "iid", "accuracy": accuracy, "accuracy-std": 0}
        return verdict(ours, base)["verdict"]

    assert against(0.81) == against(0.785) == "on par"  # within one std (0.02)
    assert against(0.83) == "better" and against(0.77) == "worse"
    tight = {**base, "accuracy-std": 0.001}  # one point is the floor
    assert verdict({**base, "arm": "cola-col", "accuracy": 0.791}, tight)["verdict"] == "on par"
    assert verdict({**base, "arm": "cola-col", "accuracy": 0.785}, tight)["verdict"] == "worse"


def test_a_smoke_run_of_every_arm(tmp_path):
    """Digits, 2 nodes, 2 rounds, both partitions, all six arms. ColA equals backprop, so the
    central arms agree to float32 noise, and ColA's personalised nodes are each node's LoRA
    trained alone."""
    from cola_fed.experiments.runner import run_experiment

    config = ExperimentConfig.load(ROOT / "experiments" / "digits.toml", smoke=True)
    lines: list[str] = []
    results = run_experiment(config, tmp_path, say=lines.append)
    assert json.loads((tmp_path / "digits.json").read_text()) == json.loads(json.dumps(results))
    assert sum("..." in line for line in lines) == len(ARMS) * 2  # progress per arm
    runs = {(r["arm"], r["partition"]): r for r in results["runs"]}
    assert set(runs) == {(a, p) for a in ARMS for p in ("iid", "dirichlet")}
    for partition in ("iid", "dirichlet"):
        for ours, theirs in (("cola-central", "peft-central"), ("cola-unmerged", "local-lora")):
            a, b = runs[ours, partition]["curve"], runs[theirs, partition]["curve"]
            assert [p["round"] for p in a] == [p["round"] for p in b] == [0, 1, 2]
            for p, q in zip(a, b):
                assert abs(p["loss"] - q["loss"]) <= 1e-5, (ours, partition, p, q)
        for arm in ("cola-col", "cola-unmerged", "fedavg-lora"):
            costs = runs[arm, partition]["costs"]
            assert costs["bytes-down"] > 0 and costs["bytes-up"] > 0
    summary = results["summary"]
    assert summary["parity"] <= 1e-5
    assert {(v["arm"], v["partition"]) for v in summary["verdicts"]} == {
        (a, p) for a in ("cola-central", "cola-col", "cola-unmerged")
        for p in ("iid", "dirichlet")}
    table = markdown(results, command="cola-fed experiment digits --smoke")
    assert table.count("| (") >= 12


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "results").glob("*.json")),
                         ids=lambda p: p.stem)
def test_every_experiment_table_in_the_results_page_comes_from_its_results_file(path):
    """The page's section is exactly what the committed JSON renders: no figure without a
    source."""
    results = json.loads(path.read_text())
    page = (ROOT / "docs" / "results.md").read_text()
    section = section_of(page, path.stem)
    assert section is not None, f"docs/results.md has no section for {path.stem}"
    assert section == markdown(results, command=f"cola-fed experiment {path.stem}")
