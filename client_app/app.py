"""The Flower ClientApp: a node of a ColA run. Imports without torch."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from cola_fed.federation.client import handle_hello, handle_train
from cola_fed.federation.flower_log import route_logs_to_flower

app = ClientApp()
route_logs_to_flower()


@app.query()
def hello(msg: Message, context: Context) -> Message:
    return handle_hello(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context)
