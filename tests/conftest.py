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


# Modules that create network namespaces and check the machine's list of them run in one xdist worker
# (`make test` runs the suite on two): another worker's namespaces would be in that list.
NAMESPACE_MODULES = frozenset({"test_netns.py", "test_hosts.py", "test_backends.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in NAMESPACE_MODULES:
            item.add_marker(pytest.mark.xdist_group("netns"))
