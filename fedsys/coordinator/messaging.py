"""Sending one kind of message to many nodes and sorting the replies.

Replies are matched to the message they answer (``reply_to_message_id``), not to their
sender: error replies that the SuperLink writes for an unreachable node carry the SuperLink
as sender. We poll every 0.2 s rather than Flower's 3 s deployment default, which saves
about 1.5 s per exchange (four exchanges per SecAgg+ round).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

POLL_SECONDS = 0.2


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
    ids = list(grid.push_messages(messages))
    node_of = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True) if mid}
    result = Exchange()
    pending = set(node_of)
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(sorted(pending)):
            mid = reply.metadata.reply_to_message_id
            if mid not in pending:
                continue
            pending.discard(mid)
            node = node_of[mid]
            if reply.has_error():
                result.errors[node] = reply.error.reason or f"error code {reply.error.code}"
            else:
                result.replies[node] = reply
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    pushed = set(node_of.values())
    result.missing = sorted([node_of[mid] for mid in pending] + [n for n in contents if n not in pushed])
    return result
