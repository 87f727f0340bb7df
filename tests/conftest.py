"""Suite-wide fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Some code under test (training, profiling) sets torch's thread count; keep it from leaking."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

