"""Natural partitions: each distinct value of a column is one node's data.

``task.partition-by = <column>`` splits the data the way it is already split in the world, as
the ColA paper makes each of Dolly's instruction categories one user. Partition ids follow the
distinct values sorted as strings, so every machine derives the same assignment from the same
data, whatever its hash seed, locale or file order. Torch-free, and free of flwr-datasets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cola_fed.errors import ConfigError

#: how many distinct values an error message lists
PREVIEW = 10


def natural_partition_names(values: Sequence, *, key: str = "task.partition-by") -> list[str]:
    """Partition id -> the column value it holds: the distinct values, as sorted strings.

    Values are compared as strings (``str(value)``), so ``1`` and ``"1"`` are one partition
    and ``"10"`` sorts before ``"2"``; the order is Python's code-point order, the same on
    every machine.

    Raises
    ------
    ConfigError
        A value is missing (``None``); the message names its row (counting from 0).
    """
    return sorted(set(_as_strings(values, key)))


def natural_partition(values: Sequence, partition_id: int, num_partitions: int, *,
                      key: str = "task.partition-by") -> np.ndarray:
    """Row indices, ascending, of the rows whose value is partition ``partition_id``'s.

    Partition ``i`` holds the rows of the ``i``-th of :func:`natural_partition_names`. There
    must be exactly one partition per distinct value: grouping several values onto a node, or
    leaving nodes without data, would make "one value per node" silently untrue.

    Parameters
    ----------
    values
        The partition column, one value per row.
    partition_id
        This node's partition, in ``[0, num_partitions)``.
    num_partitions
        How many partitions (nodes) the federation has.
    key
        The config key naming the column, named in every error.

    Returns
    -------
    numpy.ndarray
        ``int64`` row indices, sorted ascending, never empty.

    Raises
    ------
    ConfigError
        ``partition_id`` is out of range, a value is missing, or the number of distinct values
        is not ``num_partitions``.
    """
    if num_partitions < 1:
        raise ConfigError(f"num-partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    strings = _as_strings(values, key)
    names = sorted(set(strings))
    if len(names) != num_partitions:
        raise ConfigError(
            f"{key}: the column has {len(names)} distinct value(s) ({_preview(names)}) but the "
            f"federation has {num_partitions} partition(s); a natural partition gives each value "
            f"its own node, so run exactly {len(names)} node(s) (num-partitions, and "
            "num-supernodes / strategy.min-available-nodes)"
        )
    target = names[partition_id]
    return np.asarray([row for row, value in enumerate(strings) if value == target],
                      dtype=np.int64)


def _as_strings(values: Sequence, key: str) -> list[str]:
    """Every value as a string; a missing value is refused rather than made a partition."""
    strings = []
    for row, value in enumerate(values):
        if value is None:
            raise ConfigError(f"{key}: row {row} has no value (null) in the partition column")
        strings.append(str(value))
    return strings


def _preview(names: list[str]) -> str:
    """The first :data:`PREVIEW` values, quoted, for messages."""
    more = len(names) - PREVIEW
    return ", ".join(repr(name) for name in names[:PREVIEW]) + (
        f", ... ({more} more)" if more > 0 else "")
