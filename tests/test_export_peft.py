"""A ColA Low Rank adapter exported as a PEFT LoRA folder loads in PEFT with the same outputs."""

import copy

import pytest
import torch
from conftest import randomize, text_batch, tiny_bert, tiny_gpt2

from cola_fed import AdapterSpec, GradientLearner, ServerEngine
from cola_fed.errors import AdapterError
from cola_fed.export import export_peft

peft = pytest.importorskip("peft")

SPECS = {"*": AdapterSpec(kind="lowrank", rank=4),
         "classifier": AdapterSpec(kind="linear", bias=True)}


@pytest.mark.parametrize("make, targets, labels, specs", [
    (tiny_bert, ["query", "value", "classifier"], "3", SPECS),
    (tiny_gpt2, ["c_attn"], "lm", AdapterSpec(kind="lowrank", rank=4)),
], ids=["bert-with-head", "gpt2-conv1d"])
def test_exported_adapter_reproduces_cola_outputs(tmp_path, make, targets, labels, specs):
    base = make()
    engine = ServerEngine(copy.deepcopy(base), targets=targets)
    learner = GradientLearner(engine.layout, specs)
    state = randomize(learner.adapter_state(), seed=3, scale=0.05)
    batch = text_batch(3, 10, 50, labels=labels, seed=1)
    expected = engine.predict(batch, state, spec=specs)

    folder = export_peft(base, state, tmp_path / "lora")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    with torch.no_grad():
        got = loaded(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mlp_adapters_do_not_export():
    base = tiny_bert()
    engine = ServerEngine(copy.deepcopy(base), targets=["query"])
    state = GradientLearner(engine.layout, AdapterSpec(kind="mlp", hidden=4)).adapter_state()
    with pytest.raises(AdapterError, match="only Low Rank"):
        export_peft(base, state, "/nonexistent")


def test_cli_exports_a_federated_nodes_adapters(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from cola_fed.cli import main
    from cola_fed.config import RunConfig
    from cola_fed.federation.local_grid import LocalGrid
    from cola_fed.federation.server import build_strategy, write_results
    from cola_fed.federation.simulate import SIMULATIONS

    config = RunConfig.from_toml(SIMULATIONS / "digits.toml")
    strategy = build_strategy(config)
    strategy.start(LocalGrid(4), num_rounds=1, timeout=3)
    out = write_results(strategy, tmp_path / "results", seconds=0.0)
    assert main(["export-peft", "--adapters", str(out / "adapters" / "partition-0.safetensors"),
                 "--run-config", str(SIMULATIONS / "digits.toml"),
                 "--out", str(tmp_path / "lora")]) == 0

    session = next(s for s in strategy.sessions.values() if s.partition_id == 0)
    batch = {k: torch.as_tensor(v) for k, v in session.eval_batches[0].items()}
    expected = strategy.engine.predict(batch, session.adapters, spec=session.specs)
    base = strategy.task.build_model()
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "lora")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["x"]), expected, rtol=1e-5, atol=1e-5)
