import pytest
import torch

# The models under test are tiny; one thread is faster than two and keeps runs reproducible.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """The serve tests' small LR-Recsys bundle, built once per session."""
    from tests.test_serve_support import build_bundle

    return build_bundle(tmp_path_factory.getbasetemp())
