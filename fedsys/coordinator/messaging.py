"""Sending one kind of message to many nodes and sorting the replies.

Replies are matched to the message they answer (``reply_to_message_id``), not to their
sender: error replies that the SuperLink writes for an unreachable node carry the SuperLink
as sender.

Neither Flower's simulation grid nor its deployment grid can signal that a reply arrived, so
an exchange polls. A fixed tick (we used 0.2 s) costs up to a whole tick after the last reply,
and a SecAgg+ round is four exchanges. The wait therefore adapts: it starts at
``POLL_MIN_SECONDS``, grows by ``POLL_BACKOFF`` per empty poll up to ``POLL_MAX_SECONDS``, and
drops back to the minimum whenever a reply comes in. While replies stream in, the last one is
seen within about half the gap before it; a long idle wait polls at most five times a second
(as the fixed tick did) and never spins.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

POLL_MIN_SECONDS = 0.005
POLL_MAX_SECONDS = 0.2
POLL_BACKOFF = 1.5


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
    """Send ``contents[node]`` to each node and wait up to ``timeout`` seconds for replies.

    Returns as soon as every pushed message has its reply (see the module docstring for how
    soon), else at the timeout, after one last poll.

    Args:
        grid: The ServerApp's grid.
        contents: The message content for each destination node.
        message_type: Flower message type (e.g. ``train`` or ``train.secagg_setup``).
        timeout: Seconds to wait for replies.

    Returns:
        Each node's reply, error, or absence; a node whose message could not be pushed is missing.
    """
    messages = [
        Message(content=content, message_type=message_type, dst_node_id=node)
        for node, content in contents.items()
    ]
    ids = list(grid.push_messages(messages))
    node_of = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True) if mid}
    result = Exchange()
    pending = set(node_of)
    deadline = time.monotonic() + timeout
    wait = POLL_MIN_SECONDS
    while pending:
        arrived = _collect(grid, pending, node_of, result)
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        wait = POLL_MIN_SECONDS if arrived else min(wait * POLL_BACKOFF, POLL_MAX_SECONDS)
        time.sleep(min(wait, remaining))
    pushed = set(node_of.values())
    result.missing = sorted([node_of[mid] for mid in pending] + [n for n in contents if n not in pushed])
    return result


def _collect(grid: Grid, pending: set[str], node_of: Mapping[str, int], result: Exchange) -> int:
    """Pull replies to ``pending`` messages into ``result``; returns how many arrived."""
    arrived = 0
    for reply in grid.pull_messages(sorted(pending)):
        mid = reply.metadata.reply_to_message_id
        if mid not in pending:  # a duplicate, or a reply to another exchange's message
            continue
        pending.discard(mid)
        arrived += 1
        node = node_of[mid]
        if reply.has_error():
            result.errors[node] = reply.error.reason or f"error code {reply.error.code}"
        else:
            result.replies[node] = reply
    return arrived
