"""The pre-flight check: what can be known wrong about a run before Flower starts.

``cola-fed simulate`` and ``cola-fed experiment`` call :func:`preflight` before they start any
process, and the ServerApp calls it before it loads the model (a deployed server too), so a
misspelt ``adapter.targets``, a missing column or a bad data row is reported in about a second,
as one line, instead of after Flower, Ray and the model weights have started and as a
traceback. The checks are the run's own code, not a second copy of it: the task's
:meth:`~cola_fed.tasks.base.Task.check` and :func:`cola_fed.gl.targets.find_targets` on the
task's model, built without its weights (:func:`cola_fed.tasks.models.weightless_models`).
"""

from __future__ import annotations

import logging
from typing import Any

from cola_fed.config import RunConfig
from cola_fed.errors import ColaError
from cola_fed.tasks import get_task
from cola_fed.tasks.base import Task

log = logging.getLogger("cola_fed")


def preflight(config: RunConfig, num_partitions: int | None = None) -> Task:
    """Check ``config``'s task, data and adapted layers; return the checked task.

    Parameters
    ----------
    config : RunConfig
        The parsed run config (parsing already checked every key and value).
    num_partitions : int, optional
        The run's node count, where it is known (simulations, experiments): with
        ``task.partition-by`` there must be one node per value.

    Returns
    -------
    Task
        The task, its data read and checked where this machine holds it.

    Raises
    ------
    ConfigError
        The model, tokenizer, columns, template, labels or data rows are wrong.
    TargetError
        An ``adapter.targets`` entry names no module of the model (the error suggests the
        closest names), or a module that cannot be adapted.
    """
    task = get_task(config.task)
    task.check(num_partitions)
    check_targets(task, config.adapter.target_list)
    return task


def check_targets(task: Task, targets: list[str] | tuple[str, ...] = ()) -> None:
    """Resolve the layers the run adapts (``adapter.targets``, else the task's) on ``task``'s
    model built without weights, exactly as the server's engine will resolve them."""
    from cola_fed.gl.targets import find_targets

    model = structure_model(task)
    find_targets(model, task.adapted_targets(model, targets))


def structure_model(task: Task) -> Any:
    """``task``'s model: its modules, names and shapes, weights left unread where the task
    allows (a model built on torch's ``meta`` device). A task whose ``build_model`` cannot
    run that way (it computes with its weights, say) is built in full: slower, never wrong."""
    from cola_fed.tasks.models import weightless_models

    try:
        with weightless_models():
            return task.build_model()
    except ColaError:
        raise
    except Exception as err:  # only the shortcut failed: the real build decides
        log.debug("task %s: building its model without weights failed (%s: %s); building it "
                  "in full", task.name, type(err).__name__, err)
    return task.build_model()
