"""The fedsys ClientApp (wiring only; the logic lives in :mod:`fedsys.node`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsys.node import handlers, secure


def make_client_app(local: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp; ``local`` carries simulated data holders' own settings (budget, ledger dir)."""
    own = dict(local or {})
    client = ClientApp()

    client.train()(_bind(handlers.private_errors(handlers.train), own))
    client.train(handlers.EVALUATE_ACTION)(_bind(handlers.private_errors(handlers.evaluate), own))
    for action, handler in secure.HANDLERS.items():
        client.train(action)(_bind(handlers.private_errors(handler), own))

    return client


def _bind(
    handler: Callable[[Message, Context, Mapping[str, Any]], Message], own: Mapping[str, Any]
) -> Callable[[Message, Context], Message]:
    def run(message: Message, context: Context) -> Message:
        return handler(message, context, own)

    return run


app = make_client_app()
