"""Sending one kind of message to many nodes and sorting the replies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


@dataclass
class Exchange:
    """Replies of one send-and-receive, sorted by outcome."""

    replies: dict[int, Message] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # node raised / replied with an error
    missing: list[int] = field(default_factory=list)  # no reply before the timeout

    @property
    def failed(self) -> list[int]:
        """Nodes that errored or did not answer."""
        return sorted([*self.errors, *self.missing])


def exchange(
    grid: Grid,
    contents: Mapping[int, RecordDict],
    *,
    message_type: str,
    timeout: float,
) -> Exchange:
    """Send ``contents[node]`` to each node and wait up to ``timeout`` seconds for replies."""
    messages = [
        Message(content=content, message_type=message_type, dst_node_id=node)
        for node, content in contents.items()
    ]
    result = Exchange()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            result.errors[node] = reply.error.reason or f"error code {reply.error.code}"
        else:
            result.replies[node] = reply
    answered = set(result.replies) | set(result.errors)
    result.missing = sorted(node for node in contents if node not in answered)
    return result
