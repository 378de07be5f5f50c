"""A test task: the digits task whose model ends the process it runs in, when it runs in a Ray
actor and meets a batch holding :data:`MARKER`: a node's batch that kills the server's worker
(a crash, or the host killing it for memory). Outside an actor it is the digits task."""

from __future__ import annotations

import os

from cola_fed.tasks.digits import DigitsTask

#: a pixel value no real batch holds (pixels are in [0, 1])
MARKER = -7.0


def _die_on_marker(module, args, kwargs) -> None:
    x = kwargs.get("x", args[0] if args else None)
    if x is not None and bool((x == MARKER).any()) and _in_ray_actor():
        os._exit(1)


def _in_ray_actor() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


class CrashingDigits(DigitsTask):
    name = "crashing-digits"

    def build_model(self):
        model = super().build_model()
        model.register_forward_pre_hook(_die_on_marker, with_kwargs=True)
        return model
