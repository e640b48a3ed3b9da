"""The toy backend through wanport's conformance kit: every implementation it declares against its
op contract and the reference, its BackendSpec and its runtime."""

from wanport.testing import BackendConformance


class TestToyBackend(BackendConformance):
    backend = "toy"
