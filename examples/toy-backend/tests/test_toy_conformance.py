"""The toy backend through wanport's conformance kit: every implementation it declares against its
op contract and the reference, its BackendSpec and its runtime."""

import pytest

from wanport.testing import BackendConformance
from wanport_toy.plugin import KEY_BLOCK_ENV


@pytest.fixture(autouse=True)
def small_key_blocks(monkeypatch):
    """Implementations load inside each test, reading the variable then: with 16-key blocks the
    kit's short sequences (24 and 40 keys) cross several blocks, so the recurrence is what is tested."""
    monkeypatch.setenv(KEY_BLOCK_ENV, "16")


class TestToyBackend(BackendConformance):
    backend = "toy"
