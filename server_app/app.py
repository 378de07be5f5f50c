"""The Flower ServerApp: builds everything from the run config and runs ColaStrategy."""

from __future__ import annotations

import os

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cola_fed.federation.flower_log import route_logs_to_flower
    from cola_fed.federation.server import run_server

    route_logs_to_flower()
    run_server(grid, dict(context.run_config))
