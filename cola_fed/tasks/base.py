"""The task contract: what the server builds (model, targets, metric) and what a node loads
(its partition of local data, as fixed-size numpy batches). Node-side code is torch-free."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cola_fed.config import TaskConfig
from cola_fed.errors import ConfigError
from cola_fed.tasks.contract import InputContract
from cola_fed.tasks.partition import natural_partition, natural_partition_names

Batch = dict[str, np.ndarray]
#: the label of positions the loss ignores (padding, prompts), as Hugging Face models expect
IGNORE = -100


@dataclass
class ClientData:
    """One node's data: training samples it draws batches from, and held-out batches."""

    train: dict[str, np.ndarray]
    eval_batches: list[Batch]

    @property
    def num_examples(self) -> int:
        return int(next(iter(self.train.values())).shape[0])

    def batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless fixed-size batches, reshuffled every epoch (seeded)."""
        rng = np.random.default_rng(seed)
        n = self.num_examples
        if n < batch_size:
            raise ValueError(f"the partition has {n} samples, fewer than one batch ({batch_size})")
        while True:
            order = rng.permutation(n)
            for lo in range(0, n - batch_size + 1, batch_size):
                idx = order[lo:lo + batch_size]
                yield {k: v[idx] for k, v in self.train.items()}


class Task(ABC):
    """A learning problem cola-fed can run: server side (torch) and node side (numpy).

    Subclass it, define the abstract methods and :meth:`input_contract`, and register the class
    (:func:`cola_fed.tasks.register_task`, an entry point, or name it by its
    ``package.module:Class`` path); docs/tasks.md walks through one.
    """

    name: str
    #: module names (or suffixes) the adapters attach to; ``None``: the defaults of the model's
    #: ``model_type`` (``adapter.targets`` overrides either)
    targets: tuple[str, ...] | None = None
    #: a freshly initialised, frozen head adapted with a Linear adapter with bias (or None)
    head: str | None = None
    #: files the node side needs from the server's model (e.g. ``tokenizer.json``): the server
    #: ships them at hello, and the node checks them against the signed plan's hashes
    node_files: tuple[str, ...] = ()

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        #: where each of ``node_files`` is: set by the node from its verified cache, found by
        #: :meth:`locate_node_files` on the server
        self.files: dict[str, Path] = {}

    def adapted_targets(self, model: Any, override: list[str] | tuple[str, ...] = ()
                        ) -> list[str]:
        """The layers of ``model`` to adapt (server side): ``adapter.targets`` if given, else
        the task's, else the defaults of the model's ``model_type``. A fresh head is always
        adapted: it learns only so."""
        from cola_fed.gl.targets import default_targets

        targets = list(override or self.targets or default_targets(model))
        if self.head and self.head not in targets:
            targets.append(self.head)
        return targets

    def locate_node_files(self) -> dict[str, Path]:
        """Server side: the path of each of ``node_files`` (from the model)."""
        return {}

    def file(self, name: str) -> Path:
        """The path of node file ``name``: shipped (node) or located (server)."""
        if name not in self.files:
            self.files.update(self.locate_node_files())
        if name not in self.files:
            raise ConfigError(f"task {self.name!r}: the node file {name!r} is missing (the "
                              "server ships it at hello)")
        return self.files[name]

    def plan_config(self) -> TaskConfig:
        """Server side: the config the plan carries, with every value the node side needs
        resolved from the model (e.g. ``pad_id``); local paths are left out."""
        return dataclasses.replace(self.config, data_path="", model="")

    def check(self, num_partitions: int | None = None) -> None:
        """Fail early, on the server, before any node is asked: encode the first samples (so
        that a missing column, a bad template or a missing tokenizer show now) and, for
        ``task.partition-by``, check that there is one node per value."""
        labels = self.labels()
        first = self.encode(np.arange(min(len(labels), self.config.batch_size)))
        self.input_contract().check(first, min_batch=1, what="the data's first samples")
        if self.config.partition_by and num_partitions:
            natural_partition(self._partition_by(), 0, num_partitions)  # refuses a wrong count

    def partition_names(self) -> list[str]:
        """With ``task.partition-by``: partition id -> the value it holds (else empty)."""
        if not self.config.partition_by:
            return []
        pool = self._pools(len(self.labels()))[1]
        values = self._partition_by()
        return natural_partition_names([values[i] for i in pool])

    def partition_values(self) -> list | None:
        """The values of ``task.partition-by``, one per sample, or ``None`` if the task has
        no such column (then ``partition-by`` is refused)."""
        return None

    def _partition_by(self) -> list:
        values = self.partition_values()
        if values is None:
            raise ConfigError(f"task.partition-by: task {self.name!r} has no columns to "
                              "partition by")
        return values

    def metrics(self, logits: Any, labels: Any, loss: float) -> dict[str, tuple[float, int]]:
        """Held-out metrics of one batch as ``name -> (value, weight)``; averaged over batches
        by weight. The default: accuracy (:meth:`correct`) and the loss, both per prediction."""
        correct, counted = self.correct(logits, labels)
        return {"accuracy": (correct / max(counted, 1), counted), "loss": (loss, counted)}

    @abstractmethod
    def build_model(self) -> Any:
        """The frozen base model (server side)."""

    @abstractmethod
    def labels(self) -> np.ndarray:
        """One label per sample of the task's data (for partitioning), node side."""

    @abstractmethod
    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs and ``labels`` of the given samples, as numpy arrays, node side."""

    def input_contract(self) -> InputContract:
        """The keys, dtypes, shapes and value ranges every batch of this task must meet.

        The server checks each batch a node sends against it before the frozen model sees the
        batch, so a hostile node cannot feed it out-of-range ids, NaN or mistyped arrays.
        Every task must define it; the base has no safe default, so it refuses.
        """
        raise NotImplementedError(
            f"task {getattr(self, 'name', type(self).__name__)!r} defines no input contract: "
            "third-party tasks must implement input_contract() so that the server can check "
            "the batches nodes send"
        )

    def correct(self, logits: Any, labels: Any) -> tuple[int, int]:
        """``(correct, counted)`` predictions of a batch, for accuracy."""
        return int((logits.argmax(-1) == labels).sum()), int(labels.shape[0])

    def finish_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Metrics derived from the weighted means of :meth:`metrics` (e.g. perplexity)."""
        return means

    def client_data(self, partition_id: int, num_partitions: int) -> ClientData:
        """This node's partition: its first ``eval_batches`` batches held out, the rest to train."""
        labels = self.labels()
        pool = self._pools(len(labels))[1]
        if self.config.partition_by and num_partitions > 1:
            values = self._partition_by()
            rows = pool[natural_partition([values[i] for i in pool], partition_id,
                                          num_partitions)]
            # file order would hold out the partition's first rows: shuffle, seeded
            rows = np.random.default_rng(self.config.seed).permutation(rows)
        else:
            rows = pool[partition_indices(labels[pool], partition_id, num_partitions,
                                          self.config)]
        size, held_out = self.config.batch_size, self.config.eval_batches * self.config.batch_size
        if len(rows) < held_out + size:
            raise ConfigError(
                f"partition {partition_id} has {len(rows)} samples, too few for "
                f"{self.config.eval_batches} evaluation batches plus one training batch"
            )
        encoded = self.encode(rows)
        train = {k: v[held_out:] for k, v in encoded.items()}
        evals = [{k: v[lo:lo + size] for k, v in encoded.items()}
                 for lo in range(0, held_out, size)]
        return ClientData(train=train, eval_batches=evals)

    def server_test_rows(self) -> np.ndarray:
        """Rows of the server-held test set (``task.server-test-size``), in a seeded order."""
        return self._pools(len(self.labels()))[0]

    def server_test_batches(self) -> list[Batch]:
        """The server-held test set (``task.server-test-size`` samples no node holds)."""
        test = self.server_test_rows()
        encoded = self.encode(test)
        size = self.config.batch_size
        return [{k: v[lo:lo + size] for k, v in encoded.items()}
                for lo in range(0, len(test), size)]

    def _pools(self, total: int) -> tuple[np.ndarray, np.ndarray]:
        """(server test rows, rows the nodes partition), by a seeded permutation."""
        size = self.config.server_test_size
        if size >= total:
            raise ConfigError(f"task.server-test-size {size} leaves no data for the nodes")
        if size == 0:
            return np.arange(0), np.arange(total)
        order = np.random.default_rng(self.config.seed).permutation(total)
        return np.sort(order[:size]), np.sort(order[size:])


def partition_indices(labels: np.ndarray, partition_id: int, num_partitions: int,
                      config: TaskConfig) -> np.ndarray:
    """Row indices of one partition, by flwr-datasets' IID or Dirichlet (label skew) partitioner.

    One partition (a node with its own ``data-path``) is every row in a seeded order, without
    flwr-datasets: an edge node's base install does not carry it.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    if num_partitions == 1:
        return np.random.default_rng(config.seed).permutation(len(labels))
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    table = datasets.Dataset.from_dict({"row": np.arange(len(labels)), "label": labels})
    if config.partitioner == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        table = table.shuffle(seed=config.seed)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=config.dirichlet_alpha,
            min_partition_size=config.batch_size * (config.eval_batches + 1), seed=config.seed,
        )
    partitioner.dataset = table
    return np.asarray(partitioner.load_partition(partition_id)["row"])


def next_token_correct(logits: Any, labels: Any) -> tuple[int, int]:
    """``(correct, counted)`` next-token predictions over the labels that are not ignored."""
    predicted, target = logits[:, :-1].argmax(-1), labels[:, 1:]
    valid = target != IGNORE
    return int(((predicted == target) & valid).sum()), int(valid.sum())


def with_perplexity(means: dict[str, float]) -> dict[str, float]:
    """``means`` and the perplexity of its per-token ``loss`` (exp of the mean, not the mean
    of exps)."""
    if "loss" not in means:
        return means
    return {**means, "perplexity": math.exp(min(means["loss"], 700.0))}
