"""Send cola-fed's log records through Flower's logger, so that run events appear in the
ServerApp's and ClientApp's streamed output (``flwr run --stream``, ``flwr log``), with
timestamps, coloured only where colour is wanted, and without third-party noise.

Colour: Flower's console handler colours every line, whatever it writes to. A process of a
run cannot see the user's terminal (its output is captured and streamed), so it follows
``NO_COLOR`` (https://no-color.org), which ``cola-fed simulate`` sets for the processes it
starts when its own output is not a terminal.

Noise: each filter names its source (a logger, or a warning's category and module) and the
one message it drops; nothing else from that source is touched.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import IO


class _DropMessage(logging.Filter):
    """Drop the records of one logger whose message template starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefix))


#: logger name -> the filter of its noise
_LOGGER_NOISE = {
    # torch.onnx's exporter, once per ONNX export for each of torchvision's four ops
    # (16 lines for a run's graphs): cola-fed's graphs use no torchvision op
    "torch.onnx._internal.exporter._registration": _DropMessage("torchvision is not installed"),
}
#: (category, module, message regex) of warnings that say nothing to a cola-fed user
_WARNING_NOISE = (
    # ray.init in the simulation: a tip about a future Ray default, at every start
    (FutureWarning, r"ray\._private\.worker",
     r"Tip: In future versions of Ray, Ray will no longer override accelerator"),
)


def quiet_third_party() -> None:
    """Install the noise filters of this module (idempotent)."""
    for name, noise in _LOGGER_NOISE.items():
        logging.getLogger(name).addFilter(noise)  # the same object is added once
    for category, module, message in _WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def colour_wanted(stream: IO[str] | None = None) -> bool:
    """Colour only without ``NO_COLOR`` and, given a ``stream``, only when it is a terminal."""
    if os.environ.get("NO_COLOR"):
        return False
    if stream is None:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_flower_console(*, colour: bool) -> None:
    """Flower's console handler (in this process): timestamps on, colour as given."""
    from flwr.common.logger import update_console_handler

    update_console_handler(timestamps=True, colored=colour)


def route_logs_to_flower(level: int = logging.INFO) -> None:
    """cola-fed's records through Flower's handlers, timestamped, coloured unless
    ``NO_COLOR``; and the third-party noise of this process filtered."""
    quiet_third_party()
    configure_flower_console(colour=colour_wanted())
    flower = logging.getLogger("flwr")
    cola = logging.getLogger("cola_fed")
    cola.setLevel(level)
    for handler in flower.handlers:
        if handler not in cola.handlers:
            cola.addHandler(handler)
    cola.propagate = not flower.handlers
