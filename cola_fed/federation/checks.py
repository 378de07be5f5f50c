"""Strict decoding of what a node (or a checkpoint) gives the server, against the plan: adapters
within bounds, batches within the task's input contract, replies within size caps worked out
before they are opened."""

from __future__ import annotations

import numpy as np

from cola_fed.adapters.init import state_nbytes, state_shapes
from cola_fed.errors import AdapterBoundsError
from cola_fed.federation.sessions import NodeSession
from cola_fed.gl.layout import assign_specs
from cola_fed.wire import decode_adapter_state, decode_batch
from cola_fed.wire.codec import Limits


class Checks:
    """A part of ``ColaStrategy``: reads its ``config``, ``plan``, ``contract`` and the
    engine's layout."""

    @property
    def _limits(self) -> Limits:
        """Caps on any one payload part from a node."""
        rows = max(self.plan.task.batch_size, self.config.strategy.max_upload_samples)
        return Limits(max_rows=rows)

    def _reply_limits(self, session: NodeSession | None, *, upload: bool) -> Limits:
        """Caps on a node's whole sealed reply, worked out from the plan before it is opened:
        its adapters (the largest of any kind of node at hello), the samples it may carry
        (``upload``: a hello, with held-out batches and, in upload mode, its whole split) and
        1 MB of headers. Without a per-sample size in the task's contract: 2 GB."""
        per_sample = self.contract.sample_nbytes()
        if per_sample is None:
            return Limits(max_rows=self._limits.max_rows)
        layout, task = self.engine.layout, self.plan.task
        kinds = [session.specs] if session is not None else self.plan.all_specs()
        adapters = max(state_nbytes(layout, assign_specs(layout, specs)) for specs in kinds)
        samples = self.plan.interval * task.batch_size
        if upload:
            samples = task.eval_batches * task.batch_size + (
                self.config.strategy.max_upload_samples if self.plan.data_mode == "upload"
                else samples)
        return Limits(max_bytes=adapters + samples * per_sample + 2**20,
                      max_rows=self._limits.max_rows)

    def _checked_adapters(self, blob: bytes, partition_id: int
                          ) -> dict[str, dict[str, np.ndarray]]:
        """A node's adapter state: exactly the plan's parameters and shapes, finite, and every
        tensor's norm within ``strategy.max-adapter-norm``."""
        layout = self.engine.layout
        expected = state_shapes(layout, assign_specs(layout, self.plan.specs_for(partition_id)))
        state = decode_adapter_state(blob, layout=layout, expected_shapes=expected,
                                     limits=self._limits)
        return self._within_bounds(state)

    def _within_bounds(self, state: dict[str, dict[str, np.ndarray]]
                       ) -> dict[str, dict[str, np.ndarray]]:
        """``state``, if every tensor is finite and within ``strategy.max-adapter-norm``
        (a node's reply and a checkpoint's adapters alike)."""
        limit = self.config.strategy.max_adapter_norm
        for layer, params in state.items():
            for name, value in params.items():
                if not np.isfinite(value).all():
                    raise AdapterBoundsError(f"adapter {layer}/{name} holds values that are "
                                             "not finite")
                norm = float(np.linalg.norm(value.astype(np.float64)))
                if norm > limit:
                    raise AdapterBoundsError(
                        f"adapter {layer}/{name} has norm {norm:.4g}, above "
                        f"strategy.max-adapter-norm = {limit:g}")
        return state

    def _checked_batch(self, blob: bytes, name: str, *, upload: bool = False
                       ) -> dict[str, np.ndarray]:
        """A node's batch, held to the task's input contract: exactly ``task.batch-size``
        samples, or in an upload between one batch and ``strategy.max-upload-samples``."""
        batch = decode_batch(blob, limits=self._limits)
        size = self.plan.task.batch_size
        if upload:
            self.contract.check(batch, min_batch=size,
                                max_batch=self.config.strategy.max_upload_samples, what=name)
        else:
            self.contract.check(batch, batch_size=size, what=name)
        return batch

