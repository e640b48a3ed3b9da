"""A strict CPU emulation of the parts of torch_npu the Ascend backend uses (tests only).

Never installed as (or named) the ``torch_npu`` distribution: tests put a module object built here
into ``sys.modules["torch_npu"]`` for the duration of a test (:func:`installed`). The ops are
registered through ``torch.library`` under their real schema strings, one private namespace per
torch_npu era (``npu_emu_v6rc2``, ``npu_emu_v7``, ``npu_emu_v26``), so argument binding — keyword
names, keyword-only arguments, int vs float — behaves as the dispatcher does on hardware.
"""

from .eras import ERAS, Era
from .kernels import NotEmulated
from .module import build_module, installed, ops_namespace

__all__ = ["ERAS", "Era", "NotEmulated", "build_module", "installed", "ops_namespace"]
