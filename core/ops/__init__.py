"""Op kinds (contracts), implementation declarations and the frozen op table."""

from .contracts import CALL_SITES, CONTRACTS, OP_KINDS
from .impl import Constraints, OpImpl, Requirements
from .table import OpTable, ResolvedOp

__all__ = [
    "CALL_SITES",
    "CONTRACTS",
    "OP_KINDS",
    "Constraints",
    "OpImpl",
    "Requirements",
    "OpTable",
    "ResolvedOp",
]
