"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and the CLI's tiny preset uses one too)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def _fresh_busy_streak():
    """Each test starts as on a quiet machine: no run of contended rows carried over from
    another test (lsbench.measure.timing.BUSY_STREAK lives for the process)."""
    from lsbench.measure import timing

    timing.BUSY_STREAK[0] = 0
