"""Run config parsing: every key typed, validated, and named in its error."""

import pytest

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError


def test_empty_config_is_the_default_run():
    config = RunConfig.from_flat({})
    assert config.adapter.spec_for(3).kind == "lowrank" and config.strategy.mode == "unmerged"


def test_pyproject_defaults_and_every_simulation_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "simulations").glob("*.toml")):
        RunConfig.from_toml(path)
    from cola_fed.config import flatten, tomllib

    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat = flatten(app)
    config = RunConfig.from_flat(flat)
    # every field of every section has a key in pyproject, so `flwr run -c` can override it
    import dataclasses

    keys = {f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)
            if not dataclasses.is_dataclass(getattr(config, f.name))}
    for section in ("task", "adapter", "optimizer", "strategy", "data", "wire", "edge",
                    "checkpoint"):
        keys |= {f"{section}.{f.name.replace('_', '-')}"
                 for f in dataclasses.fields(getattr(config, section))}
    assert keys == set(flat)


def test_heterogeneous_kinds_as_list_or_mapping():
    cyclic = RunConfig.from_flat({"adapter.kinds": "lowrank,linear,mlp"}).adapter
    assert [cyclic.spec_for(p).kind for p in range(4)] == ["lowrank", "linear", "mlp", "lowrank"]
    mapped = RunConfig.from_flat({"adapter.kind": "linear", "adapter.kinds": "0:mlp, 2:lowrank"})
    assert [mapped.adapter.spec_for(p).kind for p in range(3)] == ["mlp", "linear", "lowrank"]


@pytest.mark.parametrize("flat, key", [
    ({"adapter.rnak": 2}, "adapter.rnak"),
    ({"adapter.rank": "8"}, "adapter.rank"),
    ({"adapter.kinds": "0:lowrank,x:mlp"}, "adapter.kinds"),
    ({"adapter.kinds": "lowrank,conv"}, "adapter.kind"),
    ({"strategy.fraction-train": 0.0}, "strategy.fraction-train"),
    ({"strategy.mode": "fused"}, "strategy.mode"),
    ({"task.name": "vision"}, "task.name"),
    ({"optimizer.lr": -1.0}, "optimizer.lr"),
    ({"wire.dtype": "int8"}, "wire.dtype"),
    ({"data.interval": 0}, "data.interval"),
    ({"nonsense": 1}, "nonsense"),
])
def test_errors_name_the_key(flat, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        RunConfig.from_flat(flat)


def test_edge_backends_by_partition_and_their_errors():
    from cola_fed.config import per_partition

    cyclic = RunConfig.from_flat({"edge.backends": "onnx,torch"}).edge
    assert [per_partition("edge.backends", cyclic.backends, p, "") for p in range(3)] == [
        "onnx", "torch", "onnx"]
    mapped = RunConfig.from_flat({"edge.backends": "2:onnx"}).edge
    assert [per_partition("edge.backends", mapped.backends, p, "") for p in range(3)] == [
        "", "", "onnx"]
    with pytest.raises(ConfigError, match=r"edge\.backends.*tensorflow"):
        RunConfig.from_flat({"edge.backends": "onnx,tensorflow"})
    with pytest.raises(ConfigError, match=r"edge\.backends: expected 'partition-id:value'"):
        RunConfig.from_flat({"edge.backends": "x:onnx"})
