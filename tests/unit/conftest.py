"""Fixtures shared by unit tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Train on one torch thread: tiny models on a shared CPU run several times slower when torch
    has more threads than free cores (they spin-wait each other); the results are the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
