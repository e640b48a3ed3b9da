"""Op kinds (contracts), implementation declarations and the frozen op table."""

from .checks import check_kv_lens, check_rotary_tables
from .contracts import CALL_SITES, CONTRACTS, OP_KINDS
from .impl import Constraints, OpImpl, Requirements
from .table import OpTable, ResolvedOp

__all__ = [
    "check_kv_lens",
    "check_rotary_tables",
    "CALL_SITES",
    "CONTRACTS",
    "OP_KINDS",
    "Constraints",
    "OpImpl",
    "Requirements",
    "OpTable",
    "ResolvedOp",
]
