"""One exchange against a grid whose replies land at scripted times, on a simulated clock."""

from collections.abc import Iterable

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsys.coordinator import messaging
from fedsys.coordinator.messaging import exchange

SUPERLINK = 1


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Messages need the identity Flower sets inside a running ServerApp."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class Clock:
    """Stands in for the ``time`` module: ``sleep`` only advances ``monotonic``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "a zero sleep would spin"
        self.sleeps.append(seconds)
        self.now += seconds


class TimedGrid:
    """Each node answers at ``arrival[node]`` seconds (missing = never); ``crash`` nodes' replies
    are SuperLink error messages. Every reply can be pulled once, plus a stray duplicate."""

    def __init__(self, clock: Clock, arrival: dict[int, float], crash: Iterable[int] = ()) -> None:
        self.clock, self.arrival, self.crash = clock, arrival, set(crash)
        self.pulls = 0
        self.ready: list[tuple[float, Message]] = []

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for i, message in enumerate(messages):
            mid = f"m{i}"
            node = message.metadata.dst_node_id
            if node in self.arrival:
                if node in self.crash:
                    reply = Message(Error(code=1, reason="node gone"), reply_to=message)
                else:
                    reply = Message(RecordDict({"echo": ConfigRecord({"node": node})}), reply_to=message)
                reply.metadata.__dict__["_reply_to_message_id"] = mid
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK if node in self.crash else node
                self.ready.append((self.arrival[node], reply))
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.pulls += 1
        wanted = set(message_ids)
        due = [r for t, r in self.ready if t <= self.clock.now and r.metadata.reply_to_message_id in wanted]
        self.ready = [(t, r) for t, r in self.ready if r not in due]
        return due + due[:1]  # a duplicate must not be counted twice


def _exchange(monkeypatch, arrival, *, nodes, timeout=60.0, crash=()):
    clock = Clock()
    monkeypatch.setattr(messaging, "time", clock)
    grid = TimedGrid(clock, arrival, crash)
    contents = {node: RecordDict() for node in nodes}
    result = exchange(grid, contents, message_type="train", timeout=timeout)
    return result, clock, grid


def test_the_exchange_ends_soon_after_the_last_reply(monkeypatch):
    arrival = {node: 0.1 + 0.02 * node for node in range(10, 60)}  # a stream, the last at 1.28 s

    result, clock, _ = _exchange(monkeypatch, arrival, nodes=list(arrival))

    assert sorted(result.replies) == sorted(arrival) and not result.failed
    assert clock.now - max(arrival.values()) <= 0.5 * 0.02 + messaging.POLL_MIN_SECONDS


def test_a_lone_late_reply_costs_at_most_half_the_wait(monkeypatch):
    result, clock, _ = _exchange(monkeypatch, {7: 0.9}, nodes=[7])

    assert list(result.replies) == [7]
    assert 0.9 <= clock.now <= 0.9 * (messaging.POLL_BACKOFF) + messaging.POLL_MIN_SECONDS


def test_an_idle_wait_backs_off_and_stops_at_the_timeout(monkeypatch):
    result, clock, grid = _exchange(monkeypatch, {}, nodes=[3, 4], timeout=10.0)

    assert result.missing == [3, 4] and not result.replies
    assert clock.now == pytest.approx(10.0)
    assert max(clock.sleeps) <= messaging.POLL_MAX_SECONDS
    assert grid.pulls <= 10.0 / messaging.POLL_MAX_SECONDS + 20  # about five polls a second


def test_error_replies_are_matched_by_message_and_counted_once(monkeypatch):
    arrival = {2: 0.05, 3: 0.05, 4: 0.3}

    result, _, _ = _exchange(monkeypatch, arrival, nodes=[2, 3, 4, 5], crash=[3], timeout=1.0)

    assert sorted(result.replies) == [2, 4]
    assert result.errors == {3: "node gone"}  # sent by the SuperLink, attributed to node 3
    assert result.missing == [5]
    assert result.failed == [3, 5]
