"""The conformance kit: what every backend plugin runs to show its implementations honour the op
contracts (docs/adding-a-backend.md).

As pytest tests (the usual way)::

    from wanport.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "mybackend"

Or the checks themselves, each returning a list of problems that name the implementation:
:func:`check_impl` (= :func:`check_signature` + :func:`check_outputs` + :func:`check_refusals`),
:func:`check_backend`, :func:`check_runtime`. The inputs come from :mod:`wanport.testing.cases`.
Importing this package needs pytest only for :class:`BackendConformance`.
"""

from .checks import (
    check_availability,
    check_backend,
    check_impl,
    check_outputs,
    check_refusals,
    check_runtime,
    check_signature,
    contract_signature,
)

__all__ = [
    "BackendConformance",
    "check_availability",
    "check_backend",
    "check_impl",
    "check_outputs",
    "check_refusals",
    "check_runtime",
    "check_signature",
    "contract_signature",
]


def __getattr__(name):  # BackendConformance imports pytest: only when asked for
    if name == "BackendConformance":
        from .suite import BackendConformance

        return BackendConformance
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
