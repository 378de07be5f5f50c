"""The experiment runner: every experiment file loads, a smoke run of every arm agrees where the
mathematics says it must, the verdict rule is the documented one, and every figure of
docs/results.md comes from a committed results file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from cola_fed.errors import ConfigError
from cola_fed.experiments.config import ARMS, ExperimentConfig
from cola_fed.experiments.costs import ROLES
from cola_fed.experiments.report import (
    OVERVIEW,
    cost_table,
    markdown,
    overview,
    section_of,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))
RESULTS = sorted((ROOT / "experiments" / "results").glob("*.json"))
PAGE = ROOT / "docs" / "results.md"


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
    # the cost run: every role measured in a process of its own, the ONNX node without torch
    # (a node that imported it would have failed its rounds, and the role would carry an error)
    for role, label in ROLES.items():
        row = results["costs"][role]
        assert "error" not in row, (role, row)
        assert row["step-seconds"] > 0 and row["peak-rss-mb"] > 0
        assert f"| {label} |" in table
    assert results["costs"]["server"]["round-seconds"] > results["costs"]["server"]["step-seconds"]


def test_a_role_that_cannot_be_measured_is_reported_and_the_others_go_on():
    from cola_fed.experiments.costs import _in_fresh_process

    failed = _in_fresh_process("no-such-role", {}, 2, 1, keys=("server", "onnx-node"))
    assert set(failed) == {"server", "onnx-node"}
    assert all("process failed" in row["error"] for row in failed.values())
    lines = cost_table({"rounds": 1, "nodes": 2, **failed}, name="x")
    assert sum("process failed" in line for line in lines) == 2
    assert any("not measured" in line for line in lines)  # the roles with no row at all


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_every_experiment_table_in_the_results_page_comes_from_its_results_file(path):
    """The page's section is exactly what the committed JSON renders: no figure without a
    source."""
    results = json.loads(path.read_text())
    section = section_of(PAGE.read_text(), path.stem)
    assert section is not None, f"docs/results.md has no section for {path.stem}"
    assert section == markdown(results, command=f"cola-fed experiment {path.stem}")


def test_the_overview_comes_from_every_results_file():
    every = [json.loads(path.read_text()) for path in RESULTS]
    assert section_of(PAGE.read_text(), OVERVIEW) == overview(every)


#: a number, signed or not, with or without a unit (-0.203, 37.4x, 133 MB, 1e-3), not part
#: of a name such as MiniLM-L6, SmolLM2-135M or float32
NUMBER = re.compile(r"(?<![\w.])(?<!\w-)-?\d+(?:\.\d+)?(?:e-?\d+)?")


def sourced(quote: str, sources: set[float]) -> bool:
    """Whether some value of ``sources``, rounded as ``quote`` is written, reads ``quote``."""
    mantissa, _, exponent = quote.partition("e")
    digits = (len(mantissa.split(".")[1]) if "." in mantissa else 0) - int(exponent or 0)
    value = float(quote)
    return any(abs(round(source, digits) - value) < 1e-12 for source in sources)


def test_the_hand_written_text_of_the_results_page_quotes_no_figure_without_a_source():
    """Outside the generated sections, every number in docs/results.md is a value held in a
    results file (a setting such as a Dirichlet alpha, or a measurement, as rounded), never
    typed in."""
    text = PAGE.read_text()
    for name in [OVERVIEW] + [path.stem for path in RESULTS]:
        begin, end = f"<!-- experiment: {name} -->", f"<!-- /experiment: {name} -->"
        if begin in text and end in text:  # (a missing section fails the test above)
            text = text[:text.index(begin)] + text[text.index(end) + len(end):]
    sources: set[float] = set()

    def collect(value):
        if isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            sources.add(float(value))

    for path in RESULTS:
        collect(json.loads(path.read_text()))
    unsourced = [n for n in NUMBER.findall(text) if not sourced(n, sources)]
    assert not unsourced, f"docs/results.md quotes figures with no source: {unsourced}"


def test_the_figure_check_finds_typed_in_figures_and_their_sources():
    text = "accuracy 0.464 (-0.203) on MiniLM-L6 (SmolLM2-135M, float32), 37.4x, lr 1e-3; r=8"
    assert NUMBER.findall(text) == ["0.464", "-0.203", "37.4", "1e-3", "8"]
    assert sourced("0.464", {0.46444}) and not sourced("0.464", {0.4634, 0.47})
    assert sourced("-0.203", {-0.2031}) and sourced("1e-3", {0.001}) and sourced("8", {8})
    assert not sourced("37.4", {37.0, 0.374})


def test_an_experiment_on_your_own_model_and_data_file(tmp_path):
    """A causal LM (a tiny GPT-2) on a CSV named by ``task.data-path``: the federated arm's
    nodes read the file as simulated nodes do, ColA's personalised nodes equal each node's LoRA
    alone, and the cost run measures every role on it."""
    from test_tasks import save_tokenizer, sentiment_rows
    from transformers import GPT2Config, GPT2LMHeadModel

    from cola_fed.experiments.runner import run_experiment

    rows = sentiment_rows(96)
    (tmp_path / "data.csv").write_text("text\n" + "".join(f"{r['text']}\n" for r in rows))
    (tmp_path / "gpt2").mkdir()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, pad_token_id=0,
                               eos_token_id=2, vocab_size=save_tokenizer(tmp_path / "gpt2", rows))
                    ).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "mine.toml").write_text(f"""
[experiment]
nodes = 2
rounds = 2
evaluate-every = 1
seeds = [0]
partitions = ["iid"]
arms = ["peft-central", "cola-central", "cola-unmerged", "local-lora"]
cost-rounds = 3

[run-config]
"task.name" = "causal-lm"
"task.model" = "{tmp_path / 'gpt2'}"
"task.data-path" = "{tmp_path / 'data.csv'}"
"task.batch-size" = 4
"task.max-length" = 16
"task.eval-batches" = 1
"task.server-test-size" = 8
"adapter.rank" = 4
"optimizer.lr" = 0.02
""")
    results = run_experiment(ExperimentConfig.load(tmp_path / "mine.toml"), tmp_path / "out",
                             say=lambda line: None)
    curves = {r["arm"]: r["curve"] for r in results["runs"]}
    for ours, theirs in (("cola-central", "peft-central"), ("cola-unmerged", "local-lora")):
        assert [p["round"] for p in curves[ours]] == [0, 1, 2]
        for p, q in zip(curves[ours], curves[theirs]):
            assert abs(p["loss"] - q["loss"]) <= 1e-5, (ours, p, q)
    assert curves["cola-unmerged"][-1]["loss"] < curves["cola-unmerged"][0]["loss"]
    for role in ROLES:
        assert "error" not in results["costs"][role], (role, results["costs"][role])


def test_a_run_cut_short_is_reported_on_its_complete_seeds():
    """A run stopped part-way keeps what finished; the tables compare arms over the same
    seeds only, and say that the run was cut short."""
    from cola_fed.experiments.report import summarize

    results = json.loads((ROOT / "experiments" / "results" / "digits.json").read_text())
    results["runs"] = [r for r in results["runs"]
                       if r["seed"] == 0 or (r["seed"] == 1 and r["arm"] != "local-lora")]
    summary = summarize(results)
    assert {cell["seeds"] for cell in summary["cells"].values()} == {1}
    results["summary"] = summary
    assert "seeds 0 of the planned 0, 1, 2 (the run was cut short" in markdown(
        results, command="cola-fed experiment digits")
