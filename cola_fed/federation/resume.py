"""Checkpoints: what the server writes after a round, and taking a run back from the newest
checkpoint (``checkpoint.resume``), checked as strictly as a node's reply."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from cola_fed.adapters.init import state_shapes
from cola_fed.config import flatten
from cola_fed.errors import ConfigError
from cola_fed.federation.checkpoint import rng_state, session_record, unflatten_state
from cola_fed.federation.protocol import BACKENDS
from cola_fed.federation.sessions import NodeSession
from cola_fed.gl.layout import assign_specs
from cola_fed.wire import public_bytes

log = logging.getLogger("cola_fed")


class Resume:
    """A part of ``ColaStrategy``: reads and restores its ``members``, ``rounds``, ``lineage``,
    ``last_round`` and sampling generator, with its ``checkpoint`` and ``on_round``."""

    def _after_round(self, server_round: int) -> None:
        """Checkpoint (every ``checkpoint.every`` rounds and after the last), then results."""
        every, last = self.config.checkpoint.every, self.config.num_server_rounds
        if self.checkpoint is not None and every and (
                server_round % every == 0 or server_round == last):
            started = time.perf_counter()
            path = self.checkpoint.save(server_round, self._checkpoint_state(), {
                p: (s.version, s.tensors) for p, s in self.members.items()})
            for session in self.members.values():
                session.checkpointed = session.acknowledged
            log.info("round %d: checkpoint %s (%.2f s)", server_round, path,
                     time.perf_counter() - started)
        if self.on_round is not None:
            self.on_round(self)

    def _checkpoint_state(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"lineage": self.lineage, "server": public_bytes(self.identity).hex(),
                "plan": self.plan.with_graphs({}).to_dict(), "rounds": self.rounds,
                "rng": [version, list(internal), gauss],
                "refused-at-hello": {str(n): why for n, why in self.refused_at_hello.items()},
                "members": {str(p): s.record() for p, s in self.members.items()}}

    def _resume(self) -> None:
        """Take the run back from the newest checkpoint: every partition's session, detached
        until its node answers a hello and proves its identity."""
        state, tensors = self.checkpoint.load()
        where = self.checkpoint.folder
        if state.get("server") != public_bytes(self.identity).hex():
            raise ConfigError(f"the checkpoint in {where} was made by another server identity; "
                              "resume it with the key that made it (wire.server-key)")
        plan, saved = flatten(self.plan.with_graphs({}).to_dict()), flatten(state.get("plan", {}))
        if saved != plan:
            changed = sorted(k for k in plan.keys() | saved.keys() if plan.get(k) != saved.get(k))
            raise ConfigError(f"the run config differs from the checkpoint's in {changed}: a "
                              "resumed run keeps what its nodes were told (task, adapters, "
                              "optimizer, data, wire and edge settings); num-server-rounds, "
                              "strategy.* and checkpoint.* may change")
        # everything is read and checked as strictly as a node's reply before anything is
        # taken: a checkpoint that fails is refused whole (the server's own files are never a
        # node's fault), naming the file and the reason
        def refused(path: Any, err: Exception) -> ConfigError:
            return ConfigError(f"checkpoint {path} is damaged ({type(err).__name__}: {err}); "
                               "nothing was taken from it: resume from a copy of it, or start "
                               "afresh")
        try:
            rng = rng_state(state.get("rng"))
            lineage, last_round, rounds = state["lineage"], state["round"], state["rounds"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in (lineage, last_round)):
                raise ValueError("its lineage and round are not integers >= 0")
            if not (isinstance(rounds, list) and all(
                    isinstance(r, dict) and isinstance(r.get("round"), int) for r in rounds)):
                raise ValueError("its rounds are not a list of round records")
            if not isinstance(state["members"], dict):
                raise ValueError("its members are not an object")
            records = {int(key): session_record(record, int(key))
                       for key, record in state["members"].items()}
        except Exception as err:
            raise refused(self.checkpoint.round_file, err) from None
        members = {}
        for partition, record in records.items():
            try:
                members[partition] = self._restored(partition, record, tensors(partition))
            except Exception as err:
                path = self.checkpoint.folder / str(state["files"].get(str(partition), "?"))
                raise refused(path, err) from None
        self._rng.setstate(rng)
        self.members, self.lineage, self.last_round, self.rounds = (members, lineage,
                                                                    last_round, rounds)
        log.warning("resuming the run of %s after round %d: %d partitions, lineage %d",
                    where, self.last_round, len(self.members), self.lineage)

    def _restored(self, partition: int, record: dict[str, Any],
                  tensors: dict[str, np.ndarray]) -> NodeSession:
        """A partition's session from its checkpoint record and tensors, checked as a node's
        would be (shapes, norms, the task's input contract)."""
        adapters, batches, train = unflatten_state(tensors, ("pending", "eval"))
        layout = self.engine.layout
        expected = state_shapes(layout, assign_specs(layout, self.plan.specs_for(partition)))
        got = {layer: {name: tuple(v.shape) for name, v in params.items()}
               for layer, params in adapters.items()}
        if got != {layer: {name: tuple(shape) for name, shape in params.items()}
                   for layer, params in expected.items()}:
            raise ValueError(f"partition {partition}'s adapters do not fit the plan")
        if any(v.dtype != np.float32 for params in adapters.values() for v in params.values()):
            raise ValueError(f"partition {partition}'s adapters are not all float32")
        self._within_bounds(adapters)
        counts = {"pending": self.plan.interval, "eval": self.plan.task.eval_batches}
        for kind, want in counts.items():
            if len(batches[kind]) != want:
                raise ValueError(f"partition {partition} holds {len(batches[kind])} {kind} "
                                 f"batches, the plan needs {want}")
            for i, batch in enumerate(batches[kind]):
                self.contract.check(batch, batch_size=self.plan.task.batch_size,
                                    what=f"{kind}{i}")
        if (train is not None) != (self.plan.data_mode == "upload"):
            raise ValueError(f"partition {partition} {'holds' if train is not None else 'lacks'}"
                             f" a training split in data.mode = {self.plan.data_mode}")
        if train is not None:
            self.contract.check(train, min_batch=self.plan.task.batch_size,
                                max_batch=self.config.strategy.max_upload_samples, what="train")
        if record["backend"] not in BACKENDS:
            raise ValueError(f"partition {partition}'s backend {record['backend']!r:.40} is "
                             f"not one of {BACKENDS}")
        return NodeSession(
            partition, bytes.fromhex(record["identity"]), self.plan.specs_for(partition),
            adapters, batches["pending"], batches["eval"],
            acknowledged=record["acknowledged"], checkpointed=record["acknowledged"],
            train=train, drawn=record["drawn"], num_examples=record["num-examples"],
            backend=record["backend"], rounds_trained=record["rounds-trained"],
            failures=record["failures"], missed=record["missed"],
            quarantined=record["quarantined"], last_error=record["last-error"],
            history=record["history"], version=record["version"])

