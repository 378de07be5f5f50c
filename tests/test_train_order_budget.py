"""Issue 22, item 1: what a node decodes and unfolds for one TRAIN order, every chunk of the
interval together, stays within its ``max-payload-mb``, checked before anything is unfolded.

Before, the cap held per chunk only: an interval of convolution chunks that each unfolded just
under the cap made the node unfold about interval x the cap.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from cola_fed.config import RunConfig
from cola_fed.errors import MalformedPayloadError
from cola_fed.federation import client
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.protocol import NodeSession
from cola_fed.federation.server import build_strategy
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layer_data import output_size, unfolded_values
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.wire.codec import DecodeBudget, Limits, decode_adaptation, encode_adaptation

CONV = LayerInfo("conv", 4 * 3 * 3, 2, "conv2d", True, kernel_size=(3, 3), padding=(1, 1))
LAYOUT = Layout((CONV,))


def conv_chunk(samples: int, side: int = 12) -> tuple[bytes, int]:
    """A convolution chunk and what it takes decoded and unfolded, in bytes."""
    x = np.ones((samples, 4, side, side), np.float32)
    d = np.ones((samples, 2, *output_size(CONV, side, side)), np.float32)
    blob = encode_adaptation(AdaptationData({"conv": x}, {"conv": d}, {"conv": "conv"},
                                            {"conv": None}, loss=1.0, num_samples=samples))
    return blob, 4 * (x.size + d.size + unfolded_values(CONV, x.shape))


def test_one_chunk_is_bounded_decoded_and_unfolded_at_the_exact_byte():
    blob, cost = conv_chunk(3)
    assert cost > 5 * len(blob)  # the unfolding, not the payload, is what the cap bounds here
    assert decode_adaptation(blob, layout=LAYOUT, limits=Limits(max_bytes=cost)).grads
    with pytest.raises(MalformedPayloadError, match="decoded and unfolded"):
        decode_adaptation(blob, layout=LAYOUT, limits=Limits(max_bytes=cost - 1))


def test_the_chunks_of_one_order_share_one_budget():
    """Each chunk fits the cap alone; together they do not: the chunk that overdraws is
    refused before it is read, and one byte more budget lets the whole order through."""
    chunks = [conv_chunk(n) for n in (3, 2, 3)]
    total = sum(cost for _, cost in chunks)
    biggest = max(cost for _, cost in chunks)
    limits = Limits(max_bytes=total - 1)
    assert biggest <= limits.max_bytes  # every chunk passes the per-chunk rule
    for blob, _ in chunks:
        decode_adaptation(blob, layout=LAYOUT, limits=limits)

    budget = DecodeBudget(total - 1)
    decode_adaptation(chunks[0][0], layout=LAYOUT, limits=limits, budget=budget)
    decode_adaptation(chunks[1][0], layout=LAYOUT, limits=limits, budget=budget)
    spent = budget.spent
    with pytest.raises(MalformedPayloadError, match="first 3 chunks would take"):
        decode_adaptation(chunks[2][0], layout=LAYOUT, limits=limits, budget=budget)
    assert budget.spent == spent  # a refused chunk takes nothing

    budget = DecodeBudget(total)  # exactly at the bound
    for blob, _ in chunks:
        decode_adaptation(blob, layout=LAYOUT, limits=limits, budget=budget)
    assert budget.spent == total


def test_row_indices_and_linear_layers_count_too():
    q = LayerInfo("q", 3, 2)
    data = AdaptationData({"q": np.ones((4, 3), np.float32)}, {"q": np.ones((2, 2), np.float32)},
                          {"q": "q"}, {"q": np.array([0, 3])}, loss=0.5, num_samples=1)
    blob = encode_adaptation(data, dtype="float16")  # 2 bytes a value on the wire, 4 decoded
    cost = 4 * (12 + 4) + 8 * 2
    assert decode_adaptation(blob, layout=Layout((q,)), budget=DecodeBudget(cost)).grads
    with pytest.raises(MalformedPayloadError, match="decoded and unfolded"):
        decode_adaptation(blob, layout=Layout((q,)), budget=DecodeBudget(cost - 1))


#: rows form: the convolutions' compact data travels and the node unfolds it
MNIST = {"task.name": "mnist", "task.batch-size": 4, "task.eval-batches": 1,
         "task.server-test-size": 8, "data.interval": 3, "wire.form": "rows",
         "strategy.min-available-nodes": 1, "num-server-rounds": 1}


def last_round(grid: LocalGrid) -> int:
    state = grid.contexts[1000].state
    if client.STATE_SESSION not in state:
        return -1
    return NodeSession.from_record(state[client.STATE_SESSION]).last_round


def _mnist_round(max_payload_mb: float | None) -> LocalGrid:
    strategy = build_strategy(RunConfig.from_flat(MNIST))
    grid = LocalGrid(1)
    if max_payload_mb is not None:
        grid.contexts[1000].node_config["max-payload-mb"] = max_payload_mb
    strategy.start(grid, num_rounds=1, timeout=30)
    return grid


def test_a_node_bounds_a_whole_interval_of_convolution_chunks(monkeypatch, caplog):
    """End to end on the mnist task (two convolutions): a cap that every chunk of the interval
    fits alone, but not all of them together, refuses the order; at exactly their sum the node
    trains."""
    costs: list[int] = []
    spend = DecodeBudget.spend

    def recording(self: DecodeBudget, nbytes: int) -> None:
        spend(self, nbytes)
        costs.append(nbytes)

    monkeypatch.setattr(DecodeBudget, "spend", recording)
    grid = _mnist_round(None)
    assert last_round(grid) == 1
    assert len(costs) == MNIST["data.interval"]
    total, biggest = sum(costs), max(costs)
    assert biggest < total - 1

    def megabytes(nbytes: int) -> float:  # max-payload-mb that is exactly nbytes
        mb = nbytes / 1e6
        assert int(mb * 1e6) == nbytes or int(math.nextafter(mb, 1) * 1e6) == nbytes
        return mb if int(mb * 1e6) == nbytes else math.nextafter(mb, 1)

    for cap, trains in ((total - 1, False), (total, True)):
        costs.clear()
        with caplog.at_level(logging.WARNING, logger="cola_fed"):
            caplog.clear()
            grid = _mnist_round(megabytes(cap))
        assert (last_round(grid) == 1) is trains, caplog.text
        if not trains:
            assert "decoded and unfolded" in caplog.text
