"""Tests for the SecAgg+ neighbour graph and threshold rules."""

from __future__ import annotations

import pytest

from fedsys.errors import ConfigError
from fedsys.secagg.graph import build_neighbour_graph, check_threshold, default_degree, default_threshold


def _is_connected(graph: dict[int, frozenset[int]]) -> bool:
    start = next(iter(graph))
    seen, frontier = {start}, [start]
    while frontier:
        for neighbour in graph[frontier.pop()] - seen:
            seen.add(neighbour)
            frontier.append(neighbour)
    return seen == set(graph)


@pytest.mark.parametrize(("num_participants", "degree"), [(50, None), (50, 4), (31, 10), (200, None)])
def test_sparse_graph_is_regular_symmetric_and_connected(num_participants: int, degree: int | None) -> None:
    ids = list(range(101, 101 + num_participants))

    graph = build_neighbour_graph(ids, degree=degree)

    expected = default_degree(num_participants) if degree is None else degree
    assert set(graph) == set(ids)
    assert all(len(peers) == expected and u not in peers for u, peers in graph.items())
    assert all(u in graph[v] for u, peers in graph.items() for v in peers)
    assert _is_connected(graph)


def test_default_degree_is_logarithmic_and_small_rounds_use_the_complete_graph() -> None:
    assert default_degree(50) == 12
    assert default_degree(1000) == 20
    assert default_degree(10) == 9
    assert default_degree(20) == 19

    graph = build_neighbour_graph(range(1, 11))

    assert all(peers == frozenset(range(1, 11)) - {u} for u, peers in graph.items())


def test_graphs_are_randomised() -> None:
    graphs = {frozenset(build_neighbour_graph(range(1, 51)).items()) for _ in range(3)}

    assert len(graphs) == 3


@pytest.mark.parametrize("degree", [3, 0])
def test_odd_or_zero_degree_is_rejected(degree: int) -> None:
    with pytest.raises(ConfigError, match=f"got {degree}"):
        build_neighbour_graph(range(1, 51), degree=degree)


def test_duplicate_participants_are_rejected() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        build_neighbour_graph([1, 2, 2, 3])


def test_default_threshold_is_an_honest_majority_of_holders() -> None:
    assert default_threshold(13) == 7
    assert default_threshold(10) == 6


@pytest.mark.parametrize(("threshold", "num_holders"), [(5, 10), (6, 12), (11, 10)])
def test_threshold_outside_majority_range_is_rejected(threshold: int, num_holders: int) -> None:
    with pytest.raises(ConfigError, match=f"got {threshold}"):
        check_threshold(threshold, num_holders=num_holders)
