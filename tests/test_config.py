"""Run config parsing: every key typed, validated, and named in its error."""

import json
import re
from pathlib import Path

import pytest

from cola_fed.config import RunConfig, default_flat_config, flatten, tomllib
from cola_fed.errors import ConfigError
from cola_fed.federation.simulate import SIMULATIONS, app_config, builtin_names

ROOT = Path(__file__).resolve().parents[1]


def toml_value(value) -> str:
    """``value`` as TOML writes it (``true``, ``"iid"``, ``0.004``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def key_is_number(key: str) -> bool:
    value = default_flat_config()[key]
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_empty_config_is_the_default_run():
    config = RunConfig.from_flat({})
    assert config.adapter.spec_for(3).kind == "lowrank" and config.strategy.mode == "unmerged"


def test_defaults_are_run_config_values():
    flat = default_flat_config()
    for key, value in flat.items():
        assert isinstance(value, (bool, int, float, str)), (
            f"{key}: a Flower run config value is an int, float, bool or str; its default in "
            f"cola_fed/config.py is {value!r}")
    assert RunConfig.from_flat(flat) == RunConfig()
    assert {"num-server-rounds", "task.batch-size", "checkpoint.resume"} <= set(flat)


def test_pyproject_run_config_is_the_defaults_with_the_demo():
    """pyproject.toml's [tool.flwr.app.config] holds every key (so that `flwr run -c` can
    override it) at its dataclass default, or at the demo's value where the demo sets it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    expected = app_config()
    where = "pyproject.toml, [tool.flwr.app.config]"
    missing = [f"{key} = {toml_value(value)}" for key, value in expected.items()
               if key not in table]
    assert not missing, f"{where}: add these lines (fields of cola_fed/config.py):\n" + \
        "\n".join(missing)
    unknown = sorted(set(table) - set(expected))
    assert not unknown, f"{where}: remove {unknown} (no such field in cola_fed/config.py)"
    wrong = [f"{key} = {toml_value(value)}" for key, value in expected.items()
             if table[key] != value or type(table[key]) is not type(value)]
    assert not wrong, (
        f"{where}: each key is at its default in cola_fed/config.py, or at its value in "
        f"cola_fed/simulations/default.toml where the demo sets it; change these lines to:\n"
        + "\n".join(wrong))


def test_docs_document_every_key_at_its_default():
    """docs/configuration.md's run config table: a row per key (or keys), with the default
    that `flwr run` gives it (pyproject's, as above)."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text.split("## Run config", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in cells[1].split(", ")]
        assert len(keys) == len(defaults), f"docs/configuration.md: one default per key: {row}"
        documented.update(zip(keys, defaults))
    expected = {key: value if isinstance(value, str) and value else toml_value(value)
                for key, value in app_config().items()}  # as written there, less backticks
    missing = [f"| `{key}` | {value if key_is_number(key) else f'`{value}`'} | <meaning> |"
               for key, value in expected.items() if key not in documented]
    assert not missing, ("docs/configuration.md, ## Run config: add a row for each key:\n"
                         + "\n".join(missing))
    unknown = sorted(set(documented) - set(expected))
    assert not unknown, f"docs/configuration.md documents keys that are no fields: {unknown}"
    wrong = [f"`{key}`: documented {documented[key]}, default {value}"
             for key, value in expected.items() if documented[key] != value]
    assert not wrong, "docs/configuration.md, ## Run config: wrong defaults:\n" + \
        "\n".join(wrong)


def test_every_simulation_parses_and_ships_in_the_package():
    assert {"default", "digits"} <= set(builtin_names())
    for name in builtin_names():
        chosen = flatten(tomllib.loads((SIMULATIONS / f"{name}.toml").read_text()))
        RunConfig.from_flat({**app_config(), **chosen})
    stray = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "simulations").glob("*.toml"))
    assert not stray, (f"{', '.join(stray)}: the built-in simulations live in "
                       "cola_fed/simulations/ (shipped in the package); move them there")


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


@pytest.mark.parametrize("flat, suggestion", [
    ({"strategy.timout": 30.0}, "strategy.timeout"),
    ({"num-server-round": 3}, "num-server-rounds"),
    ({"stratgy.timeout": 30.0}, "strategy.timeout"),
    ({"adapter.rnak": 2}, "adapter.rank"),
])
def test_run_config_typos_get_did_you_mean(flat, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{re.escape(suggestion)}'"):
        RunConfig.from_flat(flat)


def test_errors_name_keys_as_written_never_the_python_field():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_flat({"num-server-rounds": "10"})
    assert str(info.value) == ("num-server-rounds: expected an integer, got the string '10'; "
                               "write num-server-rounds = 10, without quotes")
    with pytest.raises(ConfigError, match=r"^strategy\.timeout: expected a number, got the "
                       r"string '5'; write strategy\.timeout = 5"):
        RunConfig.from_flat({"strategy.timeout": "5"})
    with pytest.raises(ConfigError, match=r"^edge\.graphs: expected true or false"):
        RunConfig.from_flat({"edge.graphs": "yes"})
    with pytest.raises(ConfigError, match=r"'task' is a section, not a key.*task\.name"):
        RunConfig.from_flat({"task": "digits"})
    with pytest.raises(ConfigError, match="expected one of unmerged, merged, col, got 'merge'; "
                       "did you mean 'merged'"):
        RunConfig.from_flat({"strategy.mode": "merge"})
