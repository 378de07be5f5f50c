"""Each adapter family: closed-form VJP == autograd, zero output at init, merge == forward."""

import numpy as np
import pytest
import torch

from cola_fed import AdapterSpec
from cola_fed.adapters import build_adapter, infer_spec
from cola_fed.errors import AdapterError, ConfigError

SPECS = [
    AdapterSpec(kind="lowrank", rank=4),
    AdapterSpec(kind="linear"),
    AdapterSpec(kind="linear", bias=True),
    *(AdapterSpec(kind="mlp", hidden=6, depth=2, activation=a)
      for a in ("relu", "gelu", "tanh", "silu")),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.activation}-{s.bias}")
def test_vjp_equals_autograd_in_float64(spec):
    adapter = build_adapter(spec)
    g = torch.Generator().manual_seed(1)
    params = {k: torch.randn(v, generator=g, dtype=torch.float64)
              for k, v in adapter.param_shapes(7, 5).items()}
    x = torch.randn(11, 7, generator=g, dtype=torch.float64)
    d = torch.randn(11, 5, generator=g, dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    (adapter.forward(leaves, x) * d).sum().backward()
    closed = adapter.vjp(params, x, d)
    assert set(closed) == set(params)
    for name in params:
        ref = leaves[name].grad
        assert (closed[name] - ref).abs().max() <= 1e-12 * ref.abs().max()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.activation}-{s.bias}")
def test_initial_adapter_outputs_exact_zero(spec):
    adapter = build_adapter(spec)
    params = adapter.init(7, 5, rng=np.random.default_rng(0), dtype=torch.float32)
    adapter.check(params, 7, 5, "test")
    assert torch.equal(adapter.forward(params, torch.randn(3, 7)), torch.zeros(3, 5))


def test_lowrank_init_is_peft_lora_init_distribution():
    adapter = build_adapter(AdapterSpec(kind="lowrank", rank=8))
    params = adapter.init(384, 384, rng=np.random.default_rng(0),
                          dtype=torch.float64)
    bound = 1 / 384**0.5  # kaiming_uniform(a=sqrt 5) on fan_in 384
    assert params["A"].abs().max() <= bound and params["A"].abs().max() > 0.95 * bound
    assert torch.equal(params["B"], torch.zeros(384, 8, dtype=torch.float64))


@pytest.mark.parametrize("spec", SPECS[:3], ids=lambda s: f"{s.kind}-{s.bias}")
def test_delta_weight_reproduces_forward(spec):
    adapter = build_adapter(spec)
    g = torch.Generator().manual_seed(2)
    params = {k: torch.randn(v, generator=g, dtype=torch.float64)
              for k, v in adapter.param_shapes(7, 5).items()}
    x = torch.randn(4, 7, generator=g, dtype=torch.float64)
    dw, db = adapter.delta_weight(params)
    merged = x @ dw.T + (db if db is not None else 0)
    torch.testing.assert_close(merged, adapter.forward(params, x), rtol=1e-13, atol=1e-13)


def test_mlp_cannot_merge_and_says_so():
    with pytest.raises(AdapterError, match="cannot be merged"):
        build_adapter(AdapterSpec(kind="mlp")).delta_weight({})


def test_infer_spec_round_trips_every_family():
    for spec in [SPECS[0], SPECS[1], SPECS[2], AdapterSpec(kind="mlp", hidden=6, depth=3)]:
        adapter = build_adapter(spec)
        params = adapter.init(7, 5, rng=np.random.default_rng(), dtype=torch.float32)
        assert infer_spec(params) == spec


def test_check_names_the_layer_and_the_shape():
    adapter = build_adapter(AdapterSpec(kind="lowrank", rank=4))
    params = {"A": torch.zeros(4, 6), "B": torch.zeros(5, 4)}
    with pytest.raises(AdapterError, match=r"layer 'q'.*'A'.*\(4, 7\).*\(4, 6\)"):
        adapter.check(params, 7, 5, "layer 'q'")


def test_spec_validation_names_the_key():
    with pytest.raises(ConfigError, match=r"adapter\.kind"):
        AdapterSpec(kind="conv")
    with pytest.raises(ConfigError, match=r"adapter\.rank"):
        AdapterSpec(rank=0)
    with pytest.raises(ConfigError, match=r"adapter\.activation"):
        AdapterSpec(kind="mlp", activation="swish")
