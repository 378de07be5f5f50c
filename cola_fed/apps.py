"""The Flower apps: the ServerApp and ClientApp that ``[tool.flwr.app.components]`` names, in
pyproject.toml and in the app ``cola-fed simulate`` writes (``cola_fed.apps:server_app``,
``cola_fed.apps:client_app``). Thin: they build everything from the run config and call
:mod:`cola_fed.federation`. Imports without torch (the server imports it when it runs).
"""

from __future__ import annotations

import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from cola_fed.federation.client import handle_hello, handle_train
from cola_fed.federation.flower_log import route_logs_to_flower

server_app = ServerApp()
client_app = ClientApp()
route_logs_to_flower()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cola_fed.federation.server import run_server

    route_logs_to_flower()
    run_server(grid, dict(context.run_config))


@client_app.query()
def hello(msg: Message, context: Context) -> Message:
    return handle_hello(msg, context)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context)
