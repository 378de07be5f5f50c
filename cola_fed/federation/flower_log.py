"""Send cola-fed's log records through Flower's logger, so that run events appear in the
ServerApp's and ClientApp's streamed output (``flwr run --stream``, ``flwr log``)."""

from __future__ import annotations

import logging


def route_logs_to_flower(level: int = logging.INFO) -> None:
    flower = logging.getLogger("flwr")
    cola = logging.getLogger("cola_fed")
    cola.setLevel(level)
    for handler in flower.handlers:
        if handler not in cola.handlers:
            cola.addHandler(handler)
    cola.propagate = not flower.handlers
