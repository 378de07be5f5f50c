"""Tasks by name: built-ins, plugins by entry point, and ``package.module:Class`` paths.

A task is found in this order:

1. a name registered in this process with :func:`register_task` (the built-ins register
   themselves in :mod:`cola_fed.tasks`, lazily, as ``"module:Class"`` strings, so that naming a
   task never imports torch or another task's dependencies);
2. a name an installed package declares in the ``cola_fed.tasks`` entry-point group::

       [project.entry-points."cola_fed.tasks"]
       my-task = "my_package.tasks:MyTask"

3. a ``package.module:Class`` path, imported on demand.

A node only imports a path the server names (form 3) when its own operator allowed it (node
config ``allow-tasks`` or ``$COLA_FED_ALLOW_TASKS``): the plan comes from the other side, and
importing a module runs its code. Registered and entry-point names were installed by the
node's operator, so they are always allowed. Torch-free.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Collection
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from cola_fed.errors import ConfigError

if TYPE_CHECKING:
    from cola_fed.config import TaskConfig
    from cola_fed.tasks.base import Task

ENTRY_POINT_GROUP = "cola_fed.tasks"
#: task paths a node may import although the server named them (comma-separated)
ALLOW_TASKS_ENV = "COLA_FED_ALLOW_TASKS"
#: folders searched, after everything else, for a task path's module (``cola-fed simulate``
#: sets its working folder, so that a plugin beside the config is found without shadowing
#: anything installed)
TASK_DIRS_ENV = "COLA_FED_TASK_DIRS"

_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

_registry: dict[str, type[Task] | str] = {}


def is_task_name(name: str) -> bool:
    """Whether ``name`` has the form of a task name or a ``package.module:Class`` path."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name) or _PATH.fullmatch(name))


def check_task_name(name: str) -> None:
    """Refuse (``ConfigError``) a name that is neither a known task nor a
    ``package.module:Class`` path; nothing is imported."""
    if not isinstance(name, str) or not (_PATH.fullmatch(name) or name in known_tasks()):
        raise ConfigError(f"task.name: unknown task {name!r}; known: {known_tasks()}, or a "
                          "'package.module:Class' path")


def register_task(name: str, task: type[Task] | str) -> None:
    """Make ``task`` (a :class:`~cola_fed.tasks.base.Task` subclass, or its
    ``"package.module:Class"`` path, imported when first used) available as ``task.name``."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"task name {name!r}: use lower-case letters, digits, '-' and '_'")
    _registry[name] = task


def known_tasks() -> list[str]:
    """Every task name registered in this process or declared by an installed package."""
    return sorted({*_registry, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def task_class(name: str, *, allowed_paths: Collection[str] | None = None) -> type[Task]:
    """The task class ``name`` refers to.

    Parameters
    ----------
    name : str
        A registered name, an entry-point name or a ``package.module:Class`` path.
    allowed_paths : collection of str, optional
        ``None``: any path may be imported (the server, whose operator wrote the config). A
        node passes the paths its operator allowed; any other path is refused unimported.

    Raises
    ------
    ConfigError
        Naming ``task.name`` and the known tasks, when the name is unknown, the path is not
        allowed or does not import, or the object is not a ``Task`` subclass.
    """
    target = _registry.get(name)
    if target is None:
        declared = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if declared:
            target = declared[0].value
    if target is None:
        if not _PATH.fullmatch(name or ""):
            raise ConfigError(f"task.name: unknown task {name!r}; known: {known_tasks()}, or "
                              "a 'package.module:Class' path")
        if allowed_paths is not None and name not in allowed_paths:
            raise ConfigError(
                f"task.name: the server names the task {name!r}, which this node does not "
                f"know; allow it with node config allow-tasks=\"{name}\" (or "
                f"${ALLOW_TASKS_ENV}) if you trust it, or install a package that registers it"
            )
        target = name
    cls = _load(name, target) if isinstance(target, str) else target
    from cola_fed.tasks.base import Task

    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task.name: {name!r} is {cls!r}, not a cola_fed Task subclass")
    return cls


def get_task(config: TaskConfig, *, allowed_paths: Collection[str] | None = None) -> Task:
    """The task ``config.name`` names, configured by ``config``."""
    return task_class(config.name, allowed_paths=allowed_paths)(config)


def node_allowed_paths(node_config: dict) -> frozenset[str]:
    """The task paths a node's operator allowed (node config ``allow-tasks``, and
    ``$COLA_FED_ALLOW_TASKS``, which ``cola-fed simulate`` sets for its own task)."""
    listed = [str(node_config.get("allow-tasks", "")), os.environ.get(ALLOW_TASKS_ENV, "")]
    return frozenset(p.strip() for text in listed for p in text.split(",") if p.strip())


def _load(name: str, path: str) -> object:
    module_name, _, attr = path.partition(":")
    for folder in os.environ.get(TASK_DIRS_ENV, "").split(os.pathsep):
        if folder and folder not in sys.path:
            sys.path.append(folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"task.name: cannot import {module_name!r} for task {name!r}: {err}"
                          ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"task.name: module {module_name!r} has no {attr!r} (task {name!r})"
                          ) from None
