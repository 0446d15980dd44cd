import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one torch thread is fastest and avoids oversubscribing shared CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
