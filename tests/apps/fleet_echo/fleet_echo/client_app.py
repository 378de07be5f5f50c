"""A ClientApp for completeness (Flower requires one); the JavaScript node never runs it."""

from flwr.app import Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context) -> Message:
    return Message(msg.content, reply_to=msg)
